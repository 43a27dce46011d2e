"""The release plan a pipeline gives evaluate: whether this run's model is to be released, and why.

A run that will not be released (a backfill, an old interval, a person's "never") still trains, evaluates and
registers its model, for the record: its evaluation does not require beating the champion, its version is
tagged with the reason, and the candidate alias stays where it is.
"""

from __future__ import annotations

import json
from typing import Any

from ml.errors import StageError

#: The plan of a model evaluated outside a pipeline: released like any other.
UNPLANNED: dict[str, Any] = {"release": True, "reason": "evaluated without a release plan", "interval": []}


def checked(plan: Any) -> dict[str, Any]:
    """The plan if it has a boolean ``release``, a ``reason`` and an ``interval`` list; else a StageError."""
    if (
        not isinstance(plan, dict)
        or not isinstance(plan.get("release"), bool)
        or not isinstance(plan.get("reason"), str)
        or not isinstance(plan.get("interval", []), list)
    ):
        raise StageError(
            f"a release plan needs a boolean 'release', a 'reason' and an 'interval' list; got {plan!r}"
        )
    return plan


def parse(value: str) -> dict[str, Any]:
    """An argparse ``type=`` for ``--release-plan`` (JSON)."""
    try:
        return checked(json.loads(value))
    except json.JSONDecodeError as err:
        raise StageError(f"--release-plan is not valid JSON: {err}") from err
