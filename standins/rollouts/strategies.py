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
from typing import Any, Protocol

import httpx

from contract import INCONCLUSIVE_PAUSE, PAUSED, PROGRESSING
from ml.release.helm import Revision
from standins.rollouts import analysis
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

    def start(self, revision: Revision, workload: dict[str, Any]) -> Server: ...

    def traffic(self, revision: Revision) -> Traffic | None: ...

    def check_superseded(self, revision: Revision) -> None: ...

    def write_status(self, message: str) -> None: ...

    def local_url(self, url: str, revision: Revision) -> str: ...

    def retire(self, server: Server) -> None: ...


#: The replay sends the new model this much more than the template's minimum, so a measurement is not
#: inconclusive by a few requests lost to the router's random split.
TRAFFIC_MARGIN = 1.3
#: ...topping up to twice what that takes, and never beyond this many requests in one window (a busy minute of a
#: small service): a minimum the replay cannot reach leaves the measurement inconclusive, as quiet traffic would.
MAX_WINDOW_REQUESTS = 2000


def canary(controller: Controller, revision: Revision, workload: dict[str, Any]) -> Server:
    """Follow the Rollout's steps: ``setWeight`` moves the router's share, each ``pause`` replays traffic and,
    from ``startingStep`` on, is one measurement of the AnalysisTemplate's metrics; an ``analysis`` step runs its
    templates once."""
    spec = workload["spec"]["strategy"]["canary"]
    metrics, starting_step = analysis_of(revision, spec.get("analysis"))
    traffic = controller.traffic(revision)
    new = controller.start(revision, workload)
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
                analysed = bool(metrics) and index >= starting_step
                measured = window(controller, new, router.url, traffic, metrics if analysed else [])
                if analysed:
                    measure(controller, revision, index, metrics, measured, failures)
            elif "analysis" in step:
                inline, _ = analysis_of(revision, step["analysis"])
                once = window(controller, new, router.url, traffic, inline) if _prometheus(inline) else None
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
    metrics, _ = analysis_of(revision, spec.get("prePromotionAnalysis"))
    traffic = controller.traffic(revision)
    preview = controller.start(revision, workload)
    try:
        if metrics:
            controller.status.phase = PAUSED
            controller.write_status(f"pre-promotion analysis of revision {revision.revision} on the preview")
            urls = [preview.url, *([controller.stable.url] if controller.stable else [])]
            measured = window(controller, preview, urls, traffic, metrics) if _prometheus(metrics) else None
            measure(controller, revision, 0, metrics, measured, {})
        controller.check_superseded(revision)
        return preview
    except BaseException:
        controller.retire(preview)
        raise


def analysis_of(revision: Revision, spec: dict[str, Any] | None) -> tuple[list[analysis.Metric], int]:
    """The metrics of the AnalysisTemplates a strategy names, and the step the analysis starts at."""
    if not spec:
        return [], 0
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
    return metrics, int(spec.get("startingStep", 0))


def _prometheus(metrics: list[analysis.Metric]) -> bool:
    return any(not m.web for m in metrics)


def window(
    controller: Controller,
    new: Server,
    url: str | list[str],
    traffic: Traffic | None,
    metrics: list[analysis.Metric],
) -> analysis.Window:
    """One analysis window: the new and the stable server's counters before and after a pause of replayed traffic
    to ``url`` (the router; for blue-green, the preview and the stable server), with enough requests for the
    new model to meet the metrics' minimum at the router's current weight."""
    stable = controller.stable
    before, stable_before = new.scrape(), stable.scrape() if stable else None
    pause = controller.pace.pause_seconds
    if traffic is None:
        controller.stop_requested.wait(pause)
    else:
        minimum = max((m.min_requests for m in metrics), default=0)
        weight = controller.router.weight if isinstance(url, str) else 100
        paced = int(controller.pace.requests_per_second * pause)
        expected = math.ceil(minimum * TRAFFIC_MARGIN * 100 / weight) if minimum and weight else 0
        budget = max(paced, min(2 * expected, MAX_WINDOW_REQUESTS))
        shortfall, seconds = minimum, pause
        while budget > 0 and not controller.stop_requested.is_set():
            # The router splits at random: top up until the new model has had its minimum.
            needed = min(
                math.ceil(shortfall * TRAFFIC_MARGIN * 100 / weight) if shortfall and weight else 0, budget
            )
            budget -= max(needed, int(controller.pace.requests_per_second * seconds), 1)
            traffic.replay(url, seconds, controller.stop_requested, requests=needed)
            shortfall, seconds = minimum - analysis.requests_in(analysis.Window(before, new.scrape())), 0.0
            if shortfall <= 0:
                break
    return analysis.Window(before, new.scrape(), stable_before, stable.scrape() if stable else None)


def measure(
    controller: Controller,
    revision: Revision,
    step: int,
    metrics: list[analysis.Metric],
    measured: analysis.Window | None,
    failures: dict[str, int],
) -> None:
    """Record one measurement of each metric. Abort once a metric failed more often than its failureLimit;
    pause (until superseded) when one is inconclusive."""
    requests = analysis.requests_in(measured) if measured else None
    failed, inconclusive = [], []
    for metric in metrics:
        if metric.web:
            value: Any = _web_value(controller, metric, revision)
        else:
            assert measured is not None, "a Prometheus metric is measured over a window"
            value = analysis.measure(metric, measured)
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


def _web_value(controller: Controller, metric: analysis.Metric, revision: Revision) -> Any:
    """What the web metric's URL answers at its JSON path (an error, as in Argo, is a failed measurement)."""
    url = controller.local_url(metric.web["url"], revision)
    try:
        answer = httpx.get(
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
