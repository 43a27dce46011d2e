"""The Rollout strategies the local controller runs: canary steps and blue-green, with the analysis of each.

Each returns the new revision's server, ready to become stable, or raises ``Aborted`` (an analysis failed, or
the new API never got ready) or ``Superseded``; the server of a revision that does not become stable is retired:
all traffic goes back to stable first, and the server stops only once what the router already sent it is answered.
An inconclusive analysis pauses the rollout as Argo Rollouts does: the new model keeps its share of traffic and
the status says why, until a newer revision (a rollback, another deploy) supersedes it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from contract import INCONCLUSIVE_PAUSE, PAUSED, PROGRESSING
from ml.release.helm import Revision
from standins.rollouts import analysis, http
from standins.rollouts.prometheus import Prometheus, PrometheusUnavailable
from standins.rollouts.router import Router
from standins.rollouts.server import Server
from standins.rollouts.state import Aborted, Pace, Status
from standins.rollouts.traffic import Traffic


class Controller(Protocol):
    """What a strategy uses of the controller running it."""

    pace: Pace
    router: Router
    status: Status
    stop_requested: threading.Event
    stable: Server | None
    prometheus: Prometheus | None

    def start(self, revision: Revision, workload: dict[str, Any]) -> Server: ...

    def traffic(self, revision: Revision) -> Traffic | None: ...

    def check_superseded(self, revision: Revision) -> None: ...

    def write_status(self, message: str) -> None: ...

    def local_url(self, url: str, revision: Revision) -> str: ...

    def retire(self, server: Server) -> None: ...


#: The replay sends the new model this much more than the template's minimum, so a measurement is not
#: inconclusive by a few requests lost to the router's random split; it tops up to twice what that takes, and never
#: beyond the pace's ``max_window_requests`` in one window: a minimum the replay cannot reach leaves the measurement
#: inconclusive, as quiet traffic would. The chart's positive-share test needs hundreds of requests to each model, so
#: a 10 % step needs thousands in all.
TRAFFIC_MARGIN = 1.3


def canary(controller: Controller, revision: Revision, workload: dict[str, Any]) -> Server:
    """Follow the Rollout's steps: ``setWeight`` moves the router's share, each ``pause`` replays traffic and,
    from ``startingStep`` on, is one measurement of the AnalysisTemplate's metrics; an ``analysis`` step runs its
    templates once."""
    spec = workload["spec"]["strategy"]["canary"]
    background = analysis_of(revision, spec.get("analysis"))
    traffic = controller.traffic(revision)
    new = controller.start(revision, workload)
    baseline(controller, new)
    router, status = controller.router, controller.status
    failures: dict[str, int] = {}
    try:
        router.canary = new.url
        for index, step in enumerate(status.steps):
            controller.check_superseded(revision)
            status.currentStepIndex = index
            if "setWeight" in step:
                router.weight = status.canaryWeight = int(step["setWeight"])
                status.phase = PROGRESSING
                controller.write_status(
                    f"step {index}: {router.weight}% of traffic to revision {revision.revision}"
                )
            elif "pause" in step:
                status.phase = PAUSED
                controller.write_status(
                    f"step {index}: pause (chart: {step['pause'].get('duration', 'until promoted')}; "
                    f"local: {controller.pace.pause_seconds:.0f}s of replayed traffic)"
                )
                analysed = bool(background.metrics) and index >= background.starting_step
                measured = window(
                    controller, new, router.url, traffic, background.metrics if analysed else []
                )
                if analysed:
                    measure(controller, revision, index, background, measured, failures)
            elif "analysis" in step:
                inline = analysis_of(revision, step["analysis"])
                once = (
                    window(controller, new, router.url, traffic, inline.metrics)
                    if inline.queries_prometheus
                    else None
                )
                measure(controller, revision, index, inline, once, {})
            else:
                raise Aborted(f"step {index} {step} is not supported by the local canary")
        return new
    except BaseException:
        controller.retire(new)
        raise


def blue_green(controller: Controller, revision: Revision, workload: dict[str, Any]) -> Server:
    """Analyse the preview before switching to it; the replayed traffic goes to the preview and the stable
    model alike, so that the comparisons between them are on the same requests."""
    spec = workload["spec"]["strategy"]["blueGreen"]
    pre_promotion = analysis_of(revision, spec.get("prePromotionAnalysis"))
    traffic = controller.traffic(revision)
    preview = controller.start(revision, workload)
    baseline(controller, preview)
    try:
        if pre_promotion.metrics:
            controller.status.phase = PAUSED
            controller.write_status(f"pre-promotion analysis of revision {revision.revision} on the preview")
            urls = [preview.url, *([controller.stable.url] if controller.stable else [])]
            measured = (
                window(controller, preview, urls, traffic, pre_promotion.metrics)
                if pre_promotion.queries_prometheus
                else None
            )
            measure(controller, revision, 0, pre_promotion, measured, {})
        controller.check_superseded(revision)
        return preview
    except BaseException:
        controller.retire(preview)
        raise


@dataclass(frozen=True)
class Analysis:
    """The metrics of the templates a strategy names, the step they start at, and the arguments the Rollout gives
    them (a value, or the template hash of the ``Latest`` or ``Stable`` pods)."""

    metrics: list[analysis.Metric] = field(default_factory=list)
    starting_step: int = 0
    args: list[dict[str, Any]] = field(default_factory=list)

    @property
    def queries_prometheus(self) -> bool:
        return any(not m.web for m in self.metrics)

    def arguments(self, new: Server, stable: Server | None) -> dict[str, str]:
        """The Rollout's arguments as Argo fills them for these pods."""
        hashes = {"Latest": new.template_hash, "Stable": stable.template_hash if stable else ""}
        values = {}
        for arg in self.args:
            if "valueFrom" not in arg:
                values[arg["name"]] = str(arg.get("value", ""))
                continue
            source = arg["valueFrom"].get("podTemplateHashValue")
            if source not in hashes:
                raise Aborted(f"analysis argument {arg['name']!r}: the local canary fills only a value or a "
                              f"podTemplateHashValue of Latest or Stable, not {arg['valueFrom']}")  # fmt: skip
            values[arg["name"]] = hashes[source]
        return values


def analysis_of(revision: Revision, spec: dict[str, Any] | None) -> Analysis:
    """The analysis a strategy's ``analysis`` (or ``prePromotionAnalysis``) names."""
    if not spec:
        return Analysis()
    templates = {
        obj["metadata"]["name"]: obj for obj in revision.objects if obj.get("kind") == "AnalysisTemplate"
    }
    metrics: list[analysis.Metric] = []
    for reference in spec.get("templates", []):
        template = templates.get(reference["templateName"])
        if template is None:
            raise Aborted(f"AnalysisTemplate {reference['templateName']!r} is not part of the release")
        try:
            metrics += analysis.metrics_of(template)
        except analysis.AnalysisError as err:
            raise Aborted(str(err)) from err
    return Analysis(metrics, int(spec.get("startingStep", 0)), list(spec.get("args", [])))


@dataclass(frozen=True)
class Window:
    """One analysis window: the pods measured, and how many scoring requests the new one answered in it."""

    new: Server
    stable: Server | None
    requests: int


def baseline(controller: Controller, server: Server) -> None:
    """Let Prometheus take a new API's counters at 0 before it gets traffic: ``increase()`` counts from a series'
    first sample, so requests answered before it would be unseen, and a measurement short of its minimum."""
    if controller.prometheus is not None:
        controller.prometheus.wait_scraped([server.url], since=time.time())


def window(
    controller: Controller,
    new: Server,
    url: str | list[str],
    traffic: Traffic | None,
    metrics: list[analysis.Metric],
) -> Window:
    """One analysis window: a pause of replayed traffic to ``url`` (the router; for blue-green, the preview and the
    stable server), with enough requests for the new and the stable model to meet the metrics' minimum at the
    router's current weight; then, for Prometheus metrics, until Prometheus has scraped both pods since the traffic ended."""
    stable = controller.stable
    before = new.requests_served()
    pause = controller.pace.pause_seconds
    if traffic is None:
        controller.stop_requested.wait(pause)
    else:
        minimum = max((m.min_requests for m in metrics), default=0)
        # Each pod measured and its share of what the replay sends: through the router, the new pod gets the weight
        # and the stable one the rest; to the preview and the stable service (blue-green), each gets every request.
        weight = controller.router.weight if isinstance(url, str) else 100
        measured = [(new, weight)] + (
            [(stable, 100 - weight if isinstance(url, str) else 100)] if stable else []
        )
        counted = [
            (pod, share, pod.requests_served() if pod is not new else before) for pod, share in measured
        ]

        def needed() -> int:
            """The requests that give every measured pod its minimum, at its share (0: none needed, or none can)."""
            short = [(minimum - int(pod.requests_served() - start), share) for pod, share, start in counted]
            return max((math.ceil(gap * TRAFFIC_MARGIN * 100 / share) for gap, share in short if gap > 0 and share),
                       default=0)  # fmt: skip

        paced = int(controller.pace.requests_per_second * pause)
        budget = max(paced, min(2 * needed(), controller.pace.max_window_requests))
        seconds = pause
        while budget > 0 and not controller.stop_requested.is_set():
            # The router splits at random: top up until every measured pod has had its minimum.
            wanted = min(needed(), budget)
            budget -= max(wanted, int(controller.pace.requests_per_second * seconds), 1)
            traffic.replay(url, seconds, controller.stop_requested, requests=wanted)
            seconds = 0.0
            if not needed():
                break
    requests = int(new.requests_served() - before)
    if any(not m.web for m in metrics):
        _prometheus_of(controller).wait_scraped(
            [new.url, *([stable.url] if stable else [])], since=time.time()
        )
    return Window(new, stable, requests)


def _prometheus_of(controller: Controller) -> Prometheus:
    if controller.prometheus is None:
        raise Aborted("the local canary has no Prometheus to query")
    return controller.prometheus


def measure(
    controller: Controller,
    revision: Revision,
    step: int,
    spec: Analysis,
    measured: Window | None,
    failures: dict[str, int],
) -> None:
    """Record one measurement of each metric. Abort once a metric failed more often than its failureLimit;
    pause (until superseded) when one is inconclusive."""
    requests = measured.requests if measured else None
    failed, inconclusive = [], []
    for metric in spec.metrics:
        if metric.web:
            value: Any = _web_value(controller, metric, revision)
        else:
            assert measured is not None, "a Prometheus metric is measured over a window"
            value = _prometheus_value(controller, metric, spec.arguments(measured.new, measured.stable))
        phase = metric.phase(value)
        shown_value = None if isinstance(value, float) and math.isnan(value) else value
        controller.status.measurements.append(
            {
                "step": step,
                "weight": controller.router.weight,
                "metric": metric.name,
                "value": round(shown_value, 6) if isinstance(shown_value, float) else shown_value,
                "condition": metric.condition,
                "phase": phase,
                "requests": requests,
            }
        )
        if phase == analysis.INCONCLUSIVE:
            inconclusive.append(f'Metric "{metric.name}" assessed Inconclusive ({requests} requests to the new '
                                f"model, {metric.min_requests} needed)")  # fmt: skip
        if phase != analysis.FAILED:
            continue
        failures[metric.name] = failures.get(metric.name, 0) + 1
        if failures[metric.name] > metric.failure_limit:
            shown = (
                "no data (no requests reached the new model)"
                if shown_value is None
                else f"{value:.4g}"
                if isinstance(value, float)
                else repr(value)
            )
            failed.append(
                f'Metric "{metric.name}" assessed Failed due to failed ({failures[metric.name]}) > '
                f"failureLimit ({metric.failure_limit}): {shown}, condition {metric.condition}"
            )
    controller.write_status(f"step {step}: measured {requests} requests to the new model")
    if failed:
        raise Aborted("; ".join(failed))
    if inconclusive:
        pause_for_a_person(controller, revision, "; ".join(inconclusive))


def _prometheus_value(controller: Controller, metric: analysis.Metric, args: dict[str, str]) -> float:
    """The metric's query, its arguments filled in, as Prometheus answers it: ``result[0]``."""
    try:
        return analysis.value_of(_prometheus_of(controller).query(analysis.filled(metric, args)))
    except (analysis.AnalysisError, PrometheusUnavailable) as err:
        raise Aborted(f'Metric "{metric.name}": {err}') from err


def _web_value(controller: Controller, metric: analysis.Metric, revision: Revision) -> Any:
    """What the web metric's URL answers at its JSON path (an error, as in Argo, is a failed measurement)."""
    url = controller.local_url(metric.web["url"], revision)
    try:
        answer = http.client().get(
            url, timeout=float(metric.web.get("timeoutSeconds", 10)), auth=_mlflow_account(url)
        )
        answer.raise_for_status()
        return analysis.json_path(answer.json(), metric.web["jsonPath"])
    except (httpx.HTTPError, ValueError) as err:
        return f"error: {err}"


def _mlflow_account(url: str) -> tuple[str, str] | None:
    """The account this process has for this machine's MLflow (``MLFLOW_TRACKING_USERNAME`` and ``_PASSWORD``, the
    pipeline's, from the release stage), for a URL of that MLflow only: no other URL gets it."""
    local = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    username, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if local and username and password and url.startswith(f"{local}/"):
        return username, password
    return None


def pause_for_a_person(controller: Controller, revision: Revision, reason: str) -> None:
    """Pause as Argo Rollouts does on an inconclusive analysis: the traffic split stays, the status says why, and
    only a newer revision (a rollback, another deploy) or a stop ends the pause."""
    status = controller.status
    status.phase = PAUSED
    status.pauseConditions = [{"reason": INCONCLUSIVE_PAUSE}]
    controller.write_status(f"paused: the analysis was inconclusive: {reason}")
    while True:
        controller.check_superseded(revision)
        controller.stop_requested.wait(0.5)
