"""Replay benchmark of the quality gate's decisions: half a year of weekly retraining, judged by an oracle.

The card-fraud model (``dags/models/card_fraud.yaml``) retrains every week on the eight weeks before, as its DAG
does: for each of ``--weeks`` weekly intervals of its synthetic stream, ``ml.prepare`` cuts the windows and the splits,
``ml.train.fit_model`` trains the challenger with the model's training settings, and each rule decides whether it
replaces that rule's own champion (each rule keeps its own production model over the half year):

- ``point``: the gate before intervals (release when the challenger's average precision on the test week minus the
  champion's is at least ``min_improvement``, 0: a point estimate);
- ``superior`` and ``non-inferior``: ``ml.compare.Rule`` on the paired bootstrap, as ``ml.evaluate`` decides, with
  the model's margin, confidence and resamples; the model's own policy is marked.

The **oracle** judges every decision: both models scored on a large independent sample of the same week, drawn by
the generator with other seeds (``--oracle-seeds`` x ``--oracle-rows-per-day`` rows a day; the drift is a function of
the date, so it is the same week's world). A release is **wrong** when the oracle's 95 % interval of the difference
is below 0 (the challenger is worse); an improvement is **missed** when it is above the margin and the rule kept the
champion. The production model after each decision is scored by the oracle of the week after (the week it serves).

Then **Adult**: ``--adult-draws`` pairs of models that differ only in their training seed, on the same split of the
UCI Adult table; the adult model's rule (``dags/models/adult_income.yaml``) must not release one over the other.

Targets (``MET``/``MISSED``; exits 1 when one is missed):
- the model's rule makes at most 1 wrong release in the half year, and fewer than ``point`` (or none);
- its production model's mean oracle average precision is at least ``point``'s;
- on Adult, no release in at least 95 % of the draws.

    python -m benchmarks.bench_decisions [--weeks 26] [--adult-draws 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The first interval's end: the stream starts on 2025-01-06 and the first training window needs its 8 weeks.
FIRST_INTERVAL_END = "2025-03-03"
WRONG_RELEASES_ALLOWED = 1
ADULT_KEPT_SHARE = 0.95


@dataclass
class Ledger:
    """One rule's half year: its decisions and its production model's oracle figures."""

    rule: str
    champion: int | None = None  # the week whose challenger serves
    releases: int = 0
    wrong: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    production_ap: list[float] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=26)
    parser.add_argument(
        "--oracle-seeds", type=int, default=4, help="independent draws of each week for the oracle"
    )
    parser.add_argument("--oracle-rows-per-day", type=int, default=10_000, help="per oracle seed")
    parser.add_argument("--adult-draws", type=int, default=20)
    args = parser.parse_args(argv)

    from mlops.models import load_models

    models = load_models()
    card, adult = models.get("card_fraud"), models.get("adult_income")
    with tempfile.TemporaryDirectory(prefix="bench-decisions-") as tmp:
        started = time.perf_counter()
        ledgers, coverage = replay(card, Path(tmp), args.weeks, args.oracle_seeds, args.oracle_rows_per_day)
        print(f"(replayed {args.weeks} weeks in {time.perf_counter() - started:.0f} s)\n")
        started = time.perf_counter()
        released = seed_twins(adult, Path(tmp), args.adult_draws)
        print(f"(Adult: {args.adult_draws} pairs in {time.perf_counter() - started:.0f} s)\n")
    return report(ledgers, coverage, card.quality_gate, released, args)


# -- The replay ------------------------------------------------------------------------------------------------


#: The non-inferiority margins replayed besides the model's own: how the choice of margin plays out.
MARGINS = (0.01, 0.02, 0.03, 0.05)


def rules_of(gate: Any) -> dict[str, Any]:
    """The rules replayed: the gate before intervals, ``superior``, and ``non-inferior`` at several margins, each with
    the model's confidence and resamples; the model's own rule is among them."""
    from ml.compare import NON_INFERIOR, SUPERIOR, Rule

    def rule(policy: str, margin: float) -> Rule:
        return Rule(policy, gate.min_improvement, margin, gate.confidence, gate.resamples)

    margins = sorted({*MARGINS, gate.margin})
    return {"point": None, SUPERIOR: rule(SUPERIOR, gate.margin),
            **{f"{NON_INFERIOR} {margin:.2f}": rule(NON_INFERIOR, margin) for margin in margins}}  # fmt: skip


def own_rule(gate: Any) -> str:
    from ml.compare import SUPERIOR

    return SUPERIOR if gate.policy == SUPERIOR else f"{gate.policy} {gate.margin:.2f}"


def replay(
    model: Any, work: Path, weeks: int, oracle_seeds: int, oracle_rows_per_day: int
) -> tuple[dict[str, Ledger], dict[str, int]]:
    """Each week: prepare, train the challenger, let every rule decide against its own champion, judge by the oracle."""
    from ml.compare import paired_bootstrap
    from ml.evaluate import comparison_units

    gate, target = model.quality_gate, model.dataset.target
    rules = rules_of(gate)
    ledgers = {name: Ledger(name) for name in rules}
    scorers: dict[int, Callable[[pd.DataFrame], np.ndarray]] = {}
    oracles: dict[int, pd.DataFrame] = {}
    scored: dict[tuple[int, str, int], np.ndarray] = {}
    coverage = {"days": 0, "rows": 0, "weeks": 0}
    ends = pd.date_range(FIRST_INTERVAL_END, periods=weeks + 1, freq="7D", tz="UTC")

    def oracle(week: int) -> pd.DataFrame:
        if week not in oracles:
            oracles[week] = oracle_sample(model, ends[week] - pd.Timedelta(days=7), ends[week], oracle_seeds,
                                          oracle_rows_per_day)  # fmt: skip
        return oracles[week]

    def scores(model_week: int, where: str, week: int, rows: pd.DataFrame) -> np.ndarray:
        key = (model_week, where, week)
        if key not in scored:
            scored[key] = scorers[model_week](rows)
        return scored[key]

    print("Each cell: the rule's verdict, the difference measured on the test week (o: by the oracle)")
    print(f"{'week ending':<12} " + " ".join(f"{name:>24}" for name in rules))
    for week in range(weeks):
        test, scorers[week] = challenger(model, work, ends[week])
        labels = test[target].to_numpy()
        units, unit = comparison_units(test, {"time_column": model.dataset.time_column})
        truth = oracle(week)
        cells, verdicts = [], {}
        for name, rule in rules.items():
            ledger = ledgers[name]
            if ledger.champion is None:
                ledger.champion, ledger.releases = week, ledger.releases + 1
                cells.append(f"{'first release':>24}")
                continue
            old = ledger.champion
            new_scores, champion_scores = scores(week, "test", week, test), scores(old, "test", week, test)
            if (old, week) not in verdicts:
                compared = paired_bootstrap(labels, new_scores, champion_scores, units, unit=unit,
                                            resamples=gate.resamples, confidence=gate.confidence)  # fmt: skip
                judged = paired_bootstrap(truth[target].to_numpy(), scores(week, "oracle", week, truth),
                                          scores(old, "oracle", week, truth), truth["oracle_unit"].to_numpy(),
                                          unit="days", resamples=300, seed=1)  # fmt: skip
                verdicts[(old, week)] = (compared.differences["average_precision"],
                                         judged.differences["average_precision"])  # fmt: skip
                # Each comparison counted once, whichever rules made it.
                coverage["weeks"] += 1
                truth_difference = judged.differences["average_precision"].estimate
                for resampled, by in (
                    ("rows", None),
                    ("days", test[model.dataset.time_column].dt.floor("D")),
                ):
                    interval = paired_bootstrap(labels, new_scores, champion_scores,
                                                None if by is None else by.to_numpy(), resamples=gate.resamples,
                                                confidence=gate.confidence).differences["average_precision"]  # fmt: skip
                    coverage[resampled] += int(interval.low <= truth_difference <= interval.high)
            ap, judged_ap = verdicts[(old, week)]
            release = ap.estimate >= gate.min_improvement if rule is None else rule.passes(ap)
            when = f"{ends[week]:%Y-%m-%d}"
            if release and judged_ap.high < 0:
                ledger.wrong.append(when)
            if not release and judged_ap.low > (rule.margin if rule is not None else 0.0):
                ledger.missed.append(when)
            if release:
                ledger.champion, ledger.releases = week, ledger.releases + 1
            verdict = "release" if release else "keep"
            cells.append(f"{verdict:>8} {ap.estimate:+.3f} (o {judged_ap.estimate:+.3f})")
        for ledger in ledgers.values():
            ledger.production_ap.append(oracle_ap(scores(ledger.champion, "oracle", week + 1, oracle(week + 1)),
                                                  oracle(week + 1), target))  # fmt: skip
        print(f"{ends[week]:%Y-%m-%d}   " + " ".join(cells), flush=True)
        for stale in set(oracles) - {week + 1}:
            del oracles[stale]
        for key in [key for key in scored if key[2] <= week]:
            del scored[key]
    return ledgers, coverage


def challenger(
    model: Any, work: Path, end: pd.Timestamp
) -> tuple[pd.DataFrame, Callable[[pd.DataFrame], np.ndarray]]:
    """The week's prepared test rows and the challenger trained on its windows, as the model's DAG run would."""
    from ml import windows
    from ml.prepare import prepare
    from ml.storage import read_manifest, read_published_table
    from ml.train import TrainConfig, fit_model, resolve_device

    retraining, dataset = model.retraining, model.dataset
    cut = windows.plan((end - pd.Timedelta(days=7)).isoformat(), end.isoformat(),
                       training_days=retraining.training_days, evaluation_days=retraining.evaluation_days)  # fmt: skip
    output = work / f"prepared-{end:%Y%m%d}"
    prepare(dataset.uri, dataset.target, str(output), time_column=dataset.time_column,
            drop_columns=dataset.drop_columns, keep_columns=dataset.keep_columns, windows=cut,
            seed=model.training.seed)  # fmt: skip
    manifest = read_manifest(str(output))
    splits = {
        name: read_published_table(str(output), f"{name}.parquet") for name in ("train", "validation", "test")
    }
    config = TrainConfig(**model.training.model_dump())
    pipeline = fit_model(config, splits["train"], splits["validation"], features=manifest["features"],
                         categorical=manifest["categorical"], target=manifest["target"],
                         device=resolve_device(config.device, config.model_type)).pipeline  # fmt: skip
    features = list(manifest["features"])
    return splits["test"], lambda frame: pipeline.predict_proba(frame[features])[:, 1]


def oracle_sample(
    model: Any, start: pd.Timestamp, end: pd.Timestamp, seeds: int, rows_per_day: int
) -> pd.DataFrame:
    """The week drawn again, independently: other seeds of the same stream (the same drift, other days and rows).
    Each (seed, day) is a unit of the oracle's own interval."""
    from urllib.parse import parse_qsl, urlsplit

    from ml.synthetic import generate_range

    options = dict(parse_qsl(urlsplit(model.dataset.uri).query))
    base = int(options.get("seed", 42))
    frames = []
    for offset in range(1, seeds + 1):
        frame = generate_range(start, end, rows_per_day=rows_per_day, seed=base + 1000 * offset,
                               fraud_rate=float(options.get("fraud_rate", 0.005)))  # fmt: skip
        day = frame[model.dataset.time_column].dt.floor("D").dt.strftime("%Y-%m-%d")
        frames.append(frame.assign(oracle_unit=f"{offset}/" + day))
    return pd.concat(frames, ignore_index=True)


def oracle_ap(scores: np.ndarray, truth: pd.DataFrame, target: str) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth[target], scores))


# -- Adult: two models that differ only in their seed -------------------------------------------------------


def seed_twins(model: Any, work: Path, draws: int) -> list[bool]:
    """For each draw, two trainings on one split of Adult with other seeds; whether the model's rule releases the
    second over the first (it should not: neither is better)."""
    from benchmarks.bench_quality import adult_table
    from ml.compare import Rule, paired_bootstrap
    from ml.prepare import prepare
    from ml.storage import read_manifest, read_published_table
    from ml.train import TrainConfig, fit_model, resolve_device

    gate, dataset = model.quality_gate, model.dataset
    rule = Rule(gate.policy, gate.min_improvement, gate.margin, gate.confidence, gate.resamples)
    table, output = adult_table(work), work / "prepared-adult"
    prepare(str(table), dataset.target, str(output), positive_label=dataset.positive_label,
            drop_columns=dataset.drop_columns, seed=model.training.seed)  # fmt: skip
    manifest = read_manifest(str(output))
    splits = {
        name: read_published_table(str(output), f"{name}.parquet") for name in ("train", "validation", "test")
    }
    features, target = list(manifest["features"]), manifest["target"]
    config = TrainConfig(**model.training.model_dump())
    device = resolve_device(config.device, config.model_type)

    def scores(seed: int) -> np.ndarray:
        pipeline = fit_model(replace(config, seed=seed), splits["train"], splits["validation"], features=features,
                             categorical=manifest["categorical"], target=target, device=device).pipeline  # fmt: skip
        return pipeline.predict_proba(splits["test"][features])[:, 1]

    released = []
    labels = splits["test"][target].to_numpy()
    for draw in range(draws):
        champion, challenger_scores = scores(1000 + 2 * draw), scores(1001 + 2 * draw)
        ap = paired_bootstrap(labels, challenger_scores, champion, resamples=rule.resamples,
                              confidence=rule.confidence, seed=draw).differences["average_precision"]  # fmt: skip
        released.append(rule.passes(ap))
        print(
            f"  Adult draw {draw + 1:>2}: {ap.describe('rows')}: {'RELEASED' if released[-1] else 'kept'}",
            flush=True,
        )
    return released


# -- The report --------------------------------------------------------------------------------------------------


def report(
    ledgers: dict[str, Ledger], coverage: dict[str, int], gate: Any, released: list[bool], args: Any
) -> int:
    own = own_rule(gate)
    ours, point = ledgers[own], ledgers["point"]
    print(f"Card fraud, {args.weeks} weekly retrainings (policy of the model: {gate.policy}, margin {gate.margin}, "
          f"confidence {gate.confidence}, {gate.resamples} resamples; oracle: {args.oracle_seeds} x "
          f"{args.oracle_rows_per_day:,} rows a day):")  # fmt: skip
    print(
        f"{'rule':<34} {'releases':>9} {'wrong releases':>15} {'missed improvements':>20} {'production AP (oracle)':>23}"
    )
    for name, ledger in ledgers.items():
        mark = " (the model's)" if name == own else ""
        print(f"{name + mark:<34} {ledger.releases:>9} {len(ledger.wrong):>15} {len(ledger.missed):>20} "
              f"{np.mean(ledger.production_ap):>23.4f}")  # fmt: skip
        for what, weeks in (("wrong", ledger.wrong), ("missed", ledger.missed)):
            if weeks:
                print(f"{'':<34}   {what}: weeks ending {', '.join(weeks)}")
    if coverage["weeks"]:
        print(f"Interval coverage (the oracle's difference inside the {gate.confidence:.0%} interval), "
              f"{coverage['weeks']} comparisons on 7-day test windows: resampling days {coverage['days']}, rows "
              f"{coverage['rows']}")  # fmt: skip
    kept = 1 - sum(released) / len(released) if released else 0.0
    targets = [
        (f"wrong releases <= {WRONG_RELEASES_ALLOWED} of {args.weeks} with the model's rule ({len(ours.wrong)})",
         len(ours.wrong) <= WRONG_RELEASES_ALLOWED),
        (f"fewer wrong releases than the point rule ({len(ours.wrong)} against {len(point.wrong)})",
         len(ours.wrong) < len(point.wrong) or not ours.wrong),
        (f"production AP >= the point rule's ({np.mean(ours.production_ap):.4f} against "
         f"{np.mean(point.production_ap):.4f})", np.mean(ours.production_ap) >= np.mean(point.production_ap)),
        (f"Adult: seed twins not released over each other in >= {ADULT_KEPT_SHARE:.0%} of {len(released)} draws "
         f"({kept:.0%})", bool(released) and kept >= ADULT_KEPT_SHARE),
    ]  # fmt: skip
    for text, met in targets:
        print(f"{'MET' if met else 'MISSED'}: {text}")
    return 0 if all(met for _, met in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
