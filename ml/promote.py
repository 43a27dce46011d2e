"""Record a canary's verdict on the model version and, if the canary succeeded, make it the champion.

The production alias moves by compare-and-set: only if it still points where it pointed when evaluation compared
the candidate against it (the version tag ``mlops.champion_version_at_evaluation``). If another release moved it
since, the comparison that justified this model is stale, so the stage refuses and says why. Run again, it finds
the alias already on this version and changes nothing.

    python -m ml.promote --name card-fraud-detector --version 7 --alias champion --verdict "$(cat verdict.json)"

MLflow has no atomic compare-and-set: the check and the move are two calls a few milliseconds apart. The
pipeline runs one release at a time (``max_active_runs=1``), so only a person moving the alias by hand inside
that window could slip past the check.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from contract import (
    CANARY_MEASUREMENT_TAG_PREFIX,
    CANARY_MESSAGE_TAG,
    CANARY_REVISION_TAG,
    CANARY_VERDICT_TAG,
    CHAMPION_AT_EVALUATION_TAG,
    DEGRADED,
    HEALTHY,
)
from ml import tracking
from ml.errors import StageError
from ml.runtime import json_object

log = logging.getLogger(__name__)

VERDICTS = {HEALTHY: "promoted", DEGRADED: "aborted"}


@dataclass
class Promotion:
    """The promote stage's XCom result."""

    name: str
    version: str
    alias: str
    verdict: str
    promoted: bool
    previous_champion: str | None


def _check_verdict(verdict: dict[str, Any], name: str, version: str) -> None:
    if verdict.get("phase") not in VERDICTS:
        raise StageError(
            f"the canary verdict's phase is {verdict.get('phase')!r}, not one of {sorted(VERDICTS)}"
        )
    expected = f"models:/{name}/{version}"
    if verdict.get("model_uri") != expected:
        raise StageError(
            f"the verdict is about {verdict.get('model_uri')!r}, not {expected}; refusing to act on it"
        )


def verdict_tags(verdict: dict[str, Any]) -> dict[str, str]:
    """The verdict and its analysis figures as version tags (``mlops.canary.<metric>.step<n>``)."""
    tags = {
        CANARY_VERDICT_TAG: VERDICTS[verdict["phase"]],
        CANARY_MESSAGE_TAG: str(verdict.get("message", ""))[:5000],
        CANARY_REVISION_TAG: str(verdict.get("revision", "")),
    }
    for measurement in verdict.get("measurements", []):
        value = measurement.get("value")
        shown = "nan" if value is None else f"{value:.6g}"
        tags[f"{CANARY_MEASUREMENT_TAG_PREFIX}{measurement['metric']}.step{measurement['step']}"] = (
            f"{shown} ({measurement['phase']}, {measurement['condition']}, {measurement.get('requests', '?')} requests)"
        )
    return tags


def current_alias(name: str, alias: str) -> str | None:
    aliases = dict(tracking.client().get_registered_model(name).aliases)
    return str(aliases[alias]) if alias in aliases else None


def promote(*, name: str, version: str, alias: str, verdict: dict[str, Any]) -> Promotion:
    """Tag ``version`` with the canary's verdict; on success, move ``alias`` to it by compare-and-set."""
    _check_verdict(verdict, name, version)
    client = tracking.client()
    model_version = client.get_model_version(name, version)
    current = current_alias(name, alias)
    promoted = False
    if verdict["phase"] == HEALTHY and current != version:
        expected = model_version.tags.get(CHAMPION_AT_EVALUATION_TAG)
        if expected is None:
            raise StageError(
                f"{name} v{version} has no {CHAMPION_AT_EVALUATION_TAG} tag: was it registered by the pipeline?"
            )
        if (current or "none") != expected:
            raise StageError(
                f"{alias} moved since evaluation: {name} v{version} was compared against "
                f"{'no champion' if expected == 'none' else f'v{expected}'}, but {alias} now points at "
                f"{f'v{current}' if current else 'nothing'}; refusing to promote on a stale comparison "
                "(evaluate again against the current champion)"
            )
        client.set_registered_model_alias(name, alias, version)
        promoted = True
        log.info("%s@%s: v%s -> v%s", name, alias, current, version)
    elif verdict["phase"] == HEALTHY:
        log.info("%s@%s already points at v%s: nothing to move", name, alias, version)
    else:
        log.info("canary of %s v%s aborted: %s stays on v%s", name, version, alias, current)
    for key, value in verdict_tags(verdict).items():
        client.set_model_version_tag(name, version, key, value)
    return Promotion(
        name=name,
        version=version,
        alias=alias,
        verdict=VERDICTS[verdict["phase"]],
        promoted=promoted,
        previous_champion=current if promoted else None,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m ml.promote", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registered model")
    parser.add_argument("--version", required=True, help="the version the canary released")
    parser.add_argument("--alias", required=True, help="the production alias to move")
    parser.add_argument("--verdict", required=True, help="the rollout watch's JSON result")
    args = parser.parse_args(argv)
    promotion = promote(
        name=args.name,
        version=args.version,
        alias=args.alias,
        verdict=json_object("--verdict", "the rollout watch's result")(args.verdict),
    )
    return asdict(promotion)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
