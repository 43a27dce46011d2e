"""The canary's positive-share test, sized in advance.

A canary changes nothing in how the API answers when its model's scores have shifted: every request still gets a
200, but the new model flags far more (or fewer) transactions than the stable one. The AnalysisTemplate tests that as
a **two-proportion z-test** on the same window of traffic, in PromQL, from the ``predictions_total`` counters both
pods export: with ``x`` positives out of ``n`` decisions for each model and ``p`` the pooled share,

    z = (|x_new / n_new - x_stable / n_stable| - (1 / n_new + 1 / n_stable) / 2) / sqrt(p (1 - p) (1 / n_new + 1 / n_stable))

(Yates's continuity correction in the numerator, at least 0: with a few positives in a window the normal
approximation would otherwise raise false alarms far above ``alpha``),

and a measurement fails when ``z`` exceeds ``maxZ``. Below ``minRequests`` decisions of either model it is
inconclusive (Argo Rollouts pauses for a person).

A canary is many measurements (Argo measures every ``analysis.interval`` from ``startingStep`` until the last
step, and the first failure aborts), so ``alpha``, the share of rollouts of an unchanged model that a false alarm
stops, is split evenly over them (Bonferroni): ``maxZ`` is the two-sided critical value of ``alpha /
measurements``. ``minRequests`` is what one measurement needs to detect the change the chart is sized for: the
stable model's positive share ``baseRate`` multiplied by ``detectableRatio``, with probability ``power``, both models
having at least that many decisions (the usual sample size of a two-proportion test, equal groups). The chart's
values hold the four inputs and the two results; ``check`` refuses results that do not follow from the inputs, naming the
right ones: every model file's values over the chart's defaults are checked when the models load (``make
models-check``, the DAG file), and the chart's own by its tests.

    python -m mlops.canary_sizing --base-rate 0.02 --detectable-ratio 3 --alpha 0.05 --power 0.8 --measurements 16
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

#: Where the inputs live in the chart's values (``analysis.positiveShare``).
SECTION = "positiveShare"
#: How long a pause without a duration (until a person promotes) counts for, in seconds.
MANUAL_PAUSE_SECONDS = 3600
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Sizing:
    max_z: float
    min_requests: int


def seconds(duration: str | int) -> float:
    """An Argo duration (``5m``, ``30s``; a number: seconds) in seconds."""
    text = str(duration)
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _UNITS[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise ValueError(f"{duration!r} is not a duration such as 30s, 5m or 1h")


def measurements(values: Mapping[str, Any]) -> int:
    """How many measurements a canary's background analysis makes: one every ``analysis.interval`` over the pauses
    from ``startingStep`` on (a pause without a duration counts ``MANUAL_PAUSE_SECONDS``), and the first."""
    analysis, steps = values["analysis"], values["canary"]["steps"]
    paused = sum(
        seconds(step["pause"]["duration"]) if (step["pause"] or {}).get("duration") else MANUAL_PAUSE_SECONDS
        for step in steps[analysis["startingStep"] :]
        if "pause" in step
    )
    return int(paused // seconds(analysis["interval"])) + 1


def size(
    base_rate: float, detectable_ratio: float, alpha: float, power: float, measurements: int = 1
) -> Sizing:
    """The critical value of a two-sided test at ``alpha / measurements`` and the decisions per model a measurement
    needs to detect ``base_rate`` becoming ``base_rate * detectable_ratio`` with probability ``power``."""
    shifted = base_rate * detectable_ratio
    if not (0 < base_rate < 1 and 0 < shifted < 1 and detectable_ratio != 1):
        raise ValueError(
            f"the base rate ({base_rate}) and the shifted rate ({shifted}) must be shares strictly between 0 and 1, "
            "and differ"
        )
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha ({alpha}) and power ({power}) must be strictly between 0 and 1")
    if measurements < 1:
        raise ValueError(f"a canary makes at least one measurement, not {measurements}")
    normal = NormalDist()
    z_alpha, z_power = normal.inv_cdf(1 - alpha / measurements / 2), normal.inv_cdf(power)
    pooled = (base_rate + shifted) / 2
    spread = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_power * math.sqrt(
        base_rate * (1 - base_rate) + shifted * (1 - shifted)
    )
    return Sizing(round(z_alpha, 3), math.ceil((spread / (shifted - base_rate)) ** 2))


def z_statistic(new_positives: Any, new_total: Any, stable_positives: Any, stable_total: Any) -> Any:
    """The chart's query in NumPy (arrays or numbers): the simulations and the tests compare the two."""
    import numpy as np

    pooled = (new_positives + stable_positives) / (new_total + stable_total)
    variance = np.maximum(pooled * (1 - pooled), 1e-12) * (1 / new_total + 1 / stable_total)
    difference = np.abs(new_positives / new_total - stable_positives / stable_total)
    corrected = np.maximum(
        difference - 0.5 * (1 / new_total + 1 / stable_total), 0
    )  # Yates's continuity correction
    return corrected / np.sqrt(variance)


def check(values: Mapping[str, Any], where: str) -> None:
    """Refuse chart values whose ``maxZ`` or ``minRequests`` do not follow from the test's inputs and the canary."""
    analysis = values["analysis"]
    given = analysis[SECTION]
    try:
        count = measurements(values)
        expected = size(given["baseRate"], given["detectableRatio"], given["alpha"], given["power"], count)
    except ValueError as err:
        raise ValueError(f"{where}: analysis.{SECTION}: {err}") from err
    if (
        math.isclose(given["maxZ"], expected.max_z, abs_tol=1e-3)
        and analysis["minRequests"] == expected.min_requests
    ):
        return
    raise ValueError(
        f"{where}: analysis.{SECTION} (baseRate {given['baseRate']}, detectableRatio {given['detectableRatio']}, alpha "
        f"{given['alpha']}, power {given['power']}, over the canary's {count} measurements) needs maxZ "
        f"{expected.max_z} and analysis.minRequests {expected.min_requests}, not {given['maxZ']} and "
        f"{analysis['minRequests']} (python -m mlops.canary_sizing --base-rate {given['baseRate']} --detectable-ratio "
        f"{given['detectableRatio']} --alpha {given['alpha']} --power {given['power']} --measurements {count})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlops.canary_sizing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base-rate", type=float, required=True, help="the stable model's positive share")
    parser.add_argument(
        "--detectable-ratio", type=float, required=True, help="the change to detect, as a ratio"
    )
    parser.add_argument(
        "--alpha", type=float, required=True, help="share of unchanged models' canaries stopped"
    )
    parser.add_argument("--power", type=float, required=True, help="chance that one measurement detects it")
    parser.add_argument("--measurements", type=int, required=True, help="measurements of a canary")
    args = parser.parse_args(argv)
    try:
        sized = size(args.base_rate, args.detectable_ratio, args.alpha, args.power, args.measurements)
    except ValueError as err:
        parser.error(str(err))
    print(f"analysis:\n  minRequests: {sized.min_requests}\n  {SECTION}:\n    maxZ: {sized.max_z}")  # noqa: T201


if __name__ == "__main__":
    main()
