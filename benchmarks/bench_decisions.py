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
is below 0 (the challenger is worse); an improvement is **missed** when it is above ``IMPROVEMENT`` (0.02) and the
rule kept the champion. The production model after each decision is scored by the oracle of the week after (the week it serves).

Then **Adult**: ``--adult-draws`` pairs of models that differ only in their training seed, on the same split of the
UCI Adult table; the adult model's rule (``dags/models/adult_income.yaml``) must not release one over the other.

Targets (``MET``/``MISSED``; exits 1 when one is missed):
- the model's rule makes at most 1 wrong release in the half year, and fewer than ``point`` (or none);
- its production model's mean oracle average precision is at least ``point``'s;
- on Adult, no release in at least 95 % of the draws;
- the gate's bootstrap (1,000 paired resamples) of 200,000 test rows, 5 % of them positive, in at most 2 s.

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
BOOTSTRAP_ROWS, BOOTSTRAP_SECONDS = 200_000, 2.0
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
    return report(ledgers, coverage, card.quality_gate, released, args, bootstrap_seconds(card.quality_gate))


def bootstrap_seconds(gate: Any) -> float:
    """The best of three timings of the gate's bootstrap on ``BOOTSTRAP_ROWS`` rows, 5 % positive (the more
    positives, the more distinct scores it tracks: 0.5 %, the card stream's rate, takes a fraction of this)."""
    from ml.compare import paired_bootstrap

    rng = np.random.default_rng(0)
    labels = (rng.random(BOOTSTRAP_ROWS) < 0.05).astype(int)
    champion = rng.normal(2 * labels, 1.0)
    challenger = champion + rng.normal(0, 0.3, BOOTSTRAP_ROWS)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        paired_bootstrap(labels, challenger, champion, resamples=gate.resamples, confidence=gate.confidence)
        timings.append(time.perf_counter() - started)
    return min(timings)


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


#: An improvement a rule should not miss: the oracle's interval of the difference above this (for every rule alike).
IMPROVEMENT = 0.02


class Replay:
    """The half year's state: each week's challenger, the oracle samples and the scores computed on them."""

    def __init__(
        self, model: Any, work: Path, weeks: int, oracle_seeds: int, oracle_rows_per_day: int
    ) -> None:
        self.model, self.work, self.gate = model, work, model.quality_gate
        self.target, self.oracle_size = model.dataset.target, (oracle_seeds, oracle_rows_per_day)
        self.ends = pd.date_range(FIRST_INTERVAL_END, periods=weeks + 1, freq="7D", tz="UTC")
        self.scorers: dict[int, Callable[[pd.DataFrame], np.ndarray]] = {}
        self.oracles: dict[int, pd.DataFrame] = {}
        self.scored: dict[tuple[int, str, int], np.ndarray] = {}
        self.coverage = {"days": 0, "rows": 0, "weeks": 0}

    def oracle(self, week: int) -> pd.DataFrame:
        if week not in self.oracles:
            end = self.ends[week]
            self.oracles[week] = oracle_sample(self.model, end - pd.Timedelta(days=7), end, *self.oracle_size)
        return self.oracles[week]

    def scores(self, model_week: int, where: str, week: int, rows: pd.DataFrame) -> np.ndarray:
        key = (model_week, where, week)
        if key not in self.scored:
            self.scored[key] = self.scorers[model_week](rows)
        return self.scored[key]

    def compare(self, week: int, test: pd.DataFrame, old: int) -> tuple[Any, Any]:
        """The week's challenger against the model of week ``old``: the difference in average precision as the gate
        measures it on the test rows, and as the oracle does; counts whether each bootstrap's interval held the
        oracle's difference."""
        from ml.compare import paired_bootstrap
        from ml.evaluate import comparison_units

        gate, labels, truth = self.gate, test[self.target].to_numpy(), self.oracle(week)
        new, champion = self.scores(week, "test", week, test), self.scores(old, "test", week, test)
        units, unit = comparison_units(test, {"time_column": self.model.dataset.time_column})
        measured = paired_bootstrap(labels, new, champion, units, unit=unit, resamples=gate.resamples,
                                    confidence=gate.confidence).differences["average_precision"]  # fmt: skip
        judged = paired_bootstrap(truth[self.target].to_numpy(), self.scores(week, "oracle", week, truth),
                                  self.scores(old, "oracle", week, truth), truth["oracle_unit"].to_numpy(),
                                  unit="days", resamples=300, seed=1).differences["average_precision"]  # fmt: skip
        self.coverage["weeks"] += 1
        days = test[self.model.dataset.time_column].dt.floor("D").to_numpy()
        for resampled, by in (("rows", None), ("days", days)):
            interval = paired_bootstrap(labels, new, champion, by, resamples=gate.resamples,
                                        confidence=gate.confidence).differences["average_precision"]  # fmt: skip
            self.coverage[resampled] += int(interval.low <= judged.estimate <= interval.high)
        return measured, judged

    def week(self, week: int, rules: dict[str, Any], ledgers: dict[str, Ledger]) -> list[str]:
        """Train the week's challenger, let each rule decide against its champion; the table's cells."""
        test, self.scorers[week] = challenger(self.model, self.work, self.ends[week])
        cells, compared = [], {}
        for name, rule in rules.items():
            ledger = ledgers[name]
            if ledger.champion is None:
                ledger.champion, ledger.releases = week, 1
                cells.append(f"{'first release':>24}")
                continue
            if ledger.champion not in compared:  # rules with the same champion share the comparison
                compared[ledger.champion] = self.compare(week, test, ledger.champion)
            measured, judged = compared[ledger.champion]
            release = (
                measured.estimate >= self.gate.min_improvement if rule is None else rule.passes(measured)
            )
            when = f"{self.ends[week]:%Y-%m-%d}"
            if release and judged.high < 0:
                ledger.wrong.append(when)
            if not release and judged.low > IMPROVEMENT:
                ledger.missed.append(when)
            if release:
                ledger.champion, ledger.releases = week, ledger.releases + 1
            cells.append(
                f"{'release' if release else 'keep':>8} {measured.estimate:+.3f} (o {judged.estimate:+.3f})"
            )
        following = self.oracle(week + 1)
        for ledger in ledgers.values():  # the production model serves the week after
            scores = self.scores(ledger.champion, "oracle", week + 1, following)
            ledger.production_ap.append(oracle_ap(scores, following, self.target))
        for stale in set(self.oracles) - {week + 1}:
            del self.oracles[stale]
        for key in [key for key in self.scored if key[2] <= week]:
            del self.scored[key]
        return cells


def replay(
    model: Any, work: Path, weeks: int, oracle_seeds: int, oracle_rows_per_day: int
) -> tuple[dict[str, Ledger], dict[str, int]]:
    """Each week: prepare, train the challenger, let every rule decide against its own champion, judge by the oracle."""
    rules = rules_of(model.quality_gate)
    ledgers = {name: Ledger(name) for name in rules}
    state = Replay(model, work, weeks, oracle_seeds, oracle_rows_per_day)
    print("Each cell: the rule's verdict, the difference measured on the test week (o: by the oracle)")
    print(f"{'week ending':<12} " + " ".join(f"{name:>24}" for name in rules))
    for week in range(weeks):
        cells = state.week(week, rules, ledgers)
        print(f"{state.ends[week]:%Y-%m-%d}   " + " ".join(cells), flush=True)
    return ledgers, state.coverage


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
    ledgers: dict[str, Ledger],
    coverage: dict[str, int],
    gate: Any,
    released: list[bool],
    args: Any,
    seconds: float,
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
        (f"the bootstrap of {BOOTSTRAP_ROWS:,} rows (5 % positive, {gate.resamples} resamples) in <= "
         f"{BOOTSTRAP_SECONDS:.0f} s ({seconds:.2f} s)", seconds <= BOOTSTRAP_SECONDS),
    ]  # fmt: skip
    for text, met in targets:
        print(f"{'MET' if met else 'MISSED'}: {text}")
    return 0 if all(met for _, met in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
