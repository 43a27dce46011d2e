"""Record a release's verdict on the model version and, if the canary succeeded, make it the champion.

The production alias moves by compare-and-set: only if it still points where it pointed when evaluation compared
the candidate against it (the version tag ``mlops.champion_version_at_evaluation``). If another release or a
person moved it since, the comparison that justified this model is stale: the verdict is ``refused`` (whatever the
canary said), the version says so, and the pipeline rolls the release back to the champion's revision. The same
check runs before the release starts (``ml.release deploy``) and, in the canary, before the last step (the chart's
champion analysis). Run again, the stage finds the alias already on this version and changes nothing.

    python -m ml.promote --name card-fraud-detector --version 7 --alias champion --verdict "$(cat verdict.json)"

MLflow has no atomic compare-and-set: the check and the move are two calls a few milliseconds apart. The
pipeline runs one release at a time (``max_active_runs=1``), so only a person moving the alias by hand inside
that window could slip past the check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from contract import (
    CANARY_ABORTED,
    CANARY_MEASUREMENT_TAG_PREFIX,
    CANARY_MESSAGE_TAG,
    CANARY_PROMOTED,
    CANARY_REFUSED,
    CANARY_REVISION_TAG,
    CANARY_VERDICT_TAG,
    CHAMPION_AT_EVALUATION_TAG,
    DEGRADED,
    HEALTHY,
    PREVIOUS_CHAMPION_TAG,
    REFUSED,
)
from ml import tracking
from ml.errors import StageError
from ml.runtime import ArgumentParser, json_object

log = logging.getLogger(__name__)

VERDICTS = {HEALTHY: CANARY_PROMOTED, DEGRADED: CANARY_ABORTED, REFUSED: CANARY_REFUSED}


@dataclass
class Promotion:
    """The promote stage's XCom result."""

    name: str
    version: str
    alias: str
    verdict: str  # promoted, aborted or refused
    promoted: bool
    previous_champion: str | None
    #: Where the alias points after the stage: the revision a rollback must restore serves this version.
    champion: str | None = None
    #: Why the version was not promoted (empty when it was).
    reason: str = ""


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


def verdict_tags(verdict: dict[str, Any], outcome: str, reason: str = "") -> dict[str, str]:
    """The outcome, its reason and the analysis figures as version tags (``mlops.canary.<metric>.step<n>``)."""
    said = str(verdict.get("message", ""))
    message = "; ".join(part for part in (reason, "" if said in reason else said) if part)
    tags = {
        CANARY_VERDICT_TAG: outcome,
        CANARY_MESSAGE_TAG: message[:5000],
        CANARY_REVISION_TAG: str(verdict.get("revision", "")),
    }
    for measurement in verdict.get("measurements", []):
        value = measurement.get("value")
        shown = "nan" if value is None else f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
        tags[f"{CANARY_MEASUREMENT_TAG_PREFIX}{measurement['metric']}.step{measurement['step']}"] = (
            f"{shown} ({measurement['phase']}, {measurement['condition']}, {measurement.get('requests', '?')} requests)"
        )
    return tags


def current_alias(name: str, alias: str) -> str | None:
    aliases = dict(tracking.client().get_registered_model(name).aliases)
    return str(aliases[alias]) if alias in aliases else None


def champion_moved(expected: str | None, current: str | None, version: str) -> str:
    """Why the compare-and-set fails (empty when it holds): ``current`` is neither what evaluation compared with
    (``expected``, "none" for no champion) nor this version."""
    if expected is None or current == version or (current or "none") == expected:
        return ""
    compared = "no champion" if expected == "none" else f"v{expected}"
    return (
        f"the champion moved since evaluation: this version was compared with {compared}, but the alias now points "
        f"at {f'v{current}' if current else 'nothing'}; refusing to promote on a stale comparison"
    )


def _not_promoted(version: str, outcome: str, verdict: dict[str, Any]) -> str:
    """Why a version was not promoted: its canary aborted, or its release was refused before it started (the
    refusal says why: a person's rejection, a spent error budget)."""
    if verdict["phase"] == REFUSED:
        return f"the release of v{version} was refused: {verdict.get('message') or 'no reason given'}"
    return f"the release of v{version} was {outcome}"


def promote(*, name: str, version: str, alias: str, verdict: dict[str, Any]) -> Promotion:
    """Tag ``version`` with the release's outcome; on a Healthy canary, move ``alias`` to it by compare-and-set.

    The outcome is ``promoted``, ``aborted`` (the canary failed) or ``refused`` (the compare-and-set failed, now
    or before the release started): the two last leave the alias where it is. The candidate alias
    (``challenger``) stays on a version whose release failed, until the next release moves it: deleting an alias
    takes MLflow's ``MANAGE`` permission, more than the pipeline's account holds (``EDIT``), and the verdict
    tag already keeps every alias from serving the version (``ml.serve.model.check_not_failed``).
    """
    _check_verdict(verdict, name, version)
    client = tracking.client()
    model_version = client.get_model_version(name, version)
    expected = model_version.tags.get(CHAMPION_AT_EVALUATION_TAG)
    current = current_alias(name, alias)
    moved = champion_moved(expected, current, version)
    outcome, reason, move = VERDICTS[verdict["phase"]], "", False
    # Set by the attempt of this stage that moved the alias (maybe one that crashed right after the move).
    moved_from = model_version.tags.get(PREVIOUS_CHAMPION_TAG)
    if moved:
        outcome, reason = VERDICTS[REFUSED], moved
    elif verdict["phase"] == HEALTHY and current != version:
        if expected is None:
            raise StageError(
                f"{name} v{version} has no {CHAMPION_AT_EVALUATION_TAG} tag: was it registered by the pipeline?"
            )
        move, moved_from = True, current or "none"
    elif verdict["phase"] == HEALTHY and moved_from is not None:
        log.info("%s@%s was moved to v%s by an earlier attempt, from %s", name, alias, version, moved_from)
    elif verdict["phase"] == HEALTHY:
        log.info("%s@%s already points at v%s: nothing to move", name, alias, version)
    else:
        reason = _not_promoted(version, outcome, verdict)
    promoted = outcome == VERDICTS[HEALTHY] and moved_from is not None
    if outcome != VERDICTS[HEALTHY]:
        log.warning("%s v%s %s: %s stays on v%s (%s)", name, version, outcome, alias, current,
                    reason or verdict.get("message"))  # fmt: skip
    # The verdict first, the alias after: the inference API serves the alias only on a "promoted" verdict, so an
    # API (re)loading the alias between the two calls must find the verdict already there.
    tags = verdict_tags(verdict, outcome, reason)
    if move:  # where the alias was, recorded before it moves: a retry after a crash reads it back
        tags[PREVIOUS_CHAMPION_TAG] = moved_from or "none"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if move:
        client.set_registered_model_alias(name, alias, version)
        log.info("%s@%s: v%s -> v%s", name, alias, current, version)
    return Promotion(
        name=name,
        version=version,
        alias=alias,
        verdict=outcome,
        promoted=promoted,
        previous_champion=(None if moved_from == "none" else moved_from) if promoted else None,
        champion=version if outcome == VERDICTS[HEALTHY] else current,
        reason=reason,
    )


def canary_report(verdict: dict[str, Any]) -> Any:
    """The canary's report as a figure: the traffic on the new model at each step, then each analysed metric's
    measurements at the steps they were taken, against its threshold (None: nothing was measured)."""
    import re

    measured = [m for m in verdict.get("measurements", []) if isinstance(m.get("value"), int | float)]
    if not measured:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m["metric"] for m in measured})
    weight, weights = 0, []
    for step in verdict.get("steps", []):
        weight = step.get("setWeight", weight)
        weights.append(weight)
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(7, 1.8 * (len(metrics) + 1)), sharex=True)
    axes[0].step(range(len(weights)), weights, where="post", color="black")
    axes[0].set(
        ylabel="% traffic",
        ylim=(0, 105),
        title=f"Canary of {verdict.get('model_uri', '?')}: {verdict['phase']}",
    )
    colours = {"Successful": "tab:green", "Failed": "tab:red", "Inconclusive": "tab:orange"}
    for ax, metric in zip(axes[1:], metrics, strict=True):
        points = [m for m in measured if m["metric"] == metric]
        ax.scatter([m["step"] for m in points], [m["value"] for m in points],
                   c=[colours.get(m["phase"], "grey") for m in points], zorder=3)  # fmt: skip
        threshold = re.search(r"([<>]=?)\s*(-?[0-9.eE+-]+)\s*$", points[0]["condition"])
        if threshold:
            ax.axhline(float(threshold.group(2)), color="grey", linestyle="--", label=points[0]["condition"])
            ax.legend(loc="best", fontsize="small")
        ax.set_ylabel(metric)
    axes[-1].set_xlabel("canary step")
    fig.tight_layout()
    return fig


def _log_canary_report(name: str, version: str, verdict: dict[str, Any]) -> None:
    """The report on the run the version was trained in, beside its evaluation's plots."""
    import matplotlib.pyplot as plt
    import mlflow

    figure = canary_report(verdict)
    if figure is None:
        return
    run_id = tracking.client().get_model_version(name, version).run_id
    with tracking.active_run(run_id):
        mlflow.log_figure(figure, "plots/canary_report.png")
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.promote", doc=__doc__)
    parser.add_argument("--name", required=True, help="registered model")
    parser.add_argument("--version", required=True, help="the version the canary released")
    parser.add_argument("--alias", required=True, help="the production alias to move")
    parser.add_argument("--verdict", required=True, help="the rollout watch's JSON result")
    args = parser.parse_args(argv)
    verdict = json_object("--verdict", "the rollout watch's result")(args.verdict)
    promotion = promote(name=args.name, version=args.version, alias=args.alias, verdict=verdict)
    _log_canary_report(args.name, args.version, verdict)
    return asdict(promotion)


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
