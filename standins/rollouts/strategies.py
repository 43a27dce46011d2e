"""The Rollout strategies the local controller runs: canary steps and blue-green, with the analysis of each.

Each returns the new revision's server, ready to become stable, or raises ``Aborted`` (the analysis failed, or
the new API never got ready) or ``Superseded``; the server of a revision that does not become stable is stopped.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Protocol

from contract import PAUSED, PROGRESSING
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

    def start(self, revision: Revision, workload: dict[str, Any]) -> Server: ...

    def traffic(self, revision: Revision) -> Traffic | None: ...

    def check_superseded(self, revision: Revision) -> None: ...

    def write_status(self, message: str) -> None: ...


def canary(controller: Controller, revision: Revision, workload: dict[str, Any]) -> Server:
    """Follow the Rollout's steps: ``setWeight`` moves the router's share, each ``pause`` replays traffic and,
    from ``startingStep`` on, is one measurement of the AnalysisTemplate's metrics."""
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
                before, after = window(controller, new, router.url, traffic)
                if metrics and index >= starting_step:
                    measure(controller, index, metrics, before, after, failures)
            else:
                raise Aborted(f"step {index} {step} is not supported by the local canary")
        return new
    except BaseException:
        new.stop()
        raise


def blue_green(controller: Controller, revision: Revision, workload: dict[str, Any]) -> Server:
    """Analyse the preview (traffic sent to it directly) before switching to it."""
    spec = workload["spec"]["strategy"]["blueGreen"]
    metrics, _ = analysis_of(revision, spec.get("prePromotionAnalysis"))
    traffic = controller.traffic(revision)
    preview = controller.start(revision, workload)
    try:
        if metrics:
            controller.status.phase = PAUSED
            controller.write_status(f"pre-promotion analysis of revision {revision.revision} on the preview")
            before, after = window(controller, preview, preview.url, traffic)
            measure(controller, 0, metrics, before, after, {})
        controller.check_superseded(revision)
        return preview
    except BaseException:
        preview.stop()
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


def window(
    controller: Controller, new: Server, url: str, traffic: Traffic | None
) -> tuple[analysis.Scrape, analysis.Scrape]:
    """One analysis window: the new server's counters before and after a pause of replayed traffic to ``url``
    (the router, or the preview itself)."""
    before = new.scrape()
    if traffic is not None:
        traffic.replay(url, controller.pace.pause_seconds, controller.stop_requested)
    else:
        controller.stop_requested.wait(controller.pace.pause_seconds)
    return before, new.scrape()


def measure(
    controller: Controller,
    step: int,
    metrics: list[analysis.Metric],
    before: analysis.Scrape,
    after: analysis.Scrape,
    failures: dict[str, int],
) -> None:
    """Record one measurement of each metric; abort once a metric failed more often than its failureLimit."""
    requests = analysis.requests_in(before, after)
    failed = []
    for metric in metrics:
        value = analysis.MEASURES[metric.name](before, after)
        ok = metric.passes(value)
        controller.status.measurements.append(
            {
                "step": step,
                "weight": controller.router.weight,
                "metric": metric.name,
                "value": None if math.isnan(value) else round(value, 6),
                "condition": metric.condition,
                "phase": "Successful" if ok else "Failed",
                "requests": requests,
            }
        )
        if ok:
            continue
        failures[metric.name] = failures.get(metric.name, 0) + 1
        if failures[metric.name] > metric.failure_limit:
            shown = "no data (no requests reached the new model)" if math.isnan(value) else f"{value:.4g}"
            failed.append(
                f'Metric "{metric.name}" assessed Failed due to failed ({failures[metric.name]}) > '
                f"failureLimit ({metric.failure_limit}): {shown}, condition {metric.condition}"
            )
    controller.write_status(f"step {step}: measured {requests} requests to the new model")
    if failed:
        raise Aborted("; ".join(failed))
