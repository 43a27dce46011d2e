"""What the controller and its strategies share: the pace of a local canary, the Rollout's status, outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import PROGRESSING


@dataclass(frozen=True)
class Pace:
    """How the local canary replaces the chart's minutes-long pauses (``release.local`` in platform.yaml)."""

    pause_seconds: float
    requests_per_second: float
    #: The most requests one analysis window sends.
    max_window_requests: int
    port: int


@dataclass
class Status:
    """The Rollout's status as the local controller keeps it (field names follow Argo's)."""

    release: str
    phase: str = PROGRESSING
    message: str = ""
    abort: bool = False
    observedRevision: int = 0  # Argo's field names (camelCase)
    stableRevision: int | None = None
    stableModelUri: str | None = None
    kind: str = ""
    strategy: str = ""
    currentStepIndex: int | None = None
    canaryWeight: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    pauseConditions: list[dict[str, Any]] = field(default_factory=list)
    endpoint: str = ""
    prometheus: str = (
        ""  # the release's Prometheus (what the error-budget gate reads on the embedded defaults)
    )
    updated: str = ""


class Aborted(Exception):
    """The new revision failed (analysis, readiness): traffic goes back to stable."""


class Superseded(Exception):
    """A newer revision was deployed while this one was rolling out (or the controller is stopping)."""
