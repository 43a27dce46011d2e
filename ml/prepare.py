"""Validate a table with a binary target and split it into train / validation / test Parquet files.

With a time column and a data interval (what the DAG passes), the test split is the evaluation window (the
interval) and the train and validation splits are the training window before it (``ml.windows``); only those
rows are read from the source (``ml.sources``). With a time column and no interval, the split is by time
quantiles of the whole table; without a time column, stratified random. The output folder is keyed by the
caller and is replaced whole on a re-run, or, with ``--by-content`` (what the DAG passes, under a folder of the
run's own: its data interval and run id), published under it in a folder named by the data's digest that is never
replaced: a retry that reads the same rows finds it, other data gets a folder of its own, and what a model version
learnt from (its ``mlops.prepared_uri``) stays as it was. It carries a ``manifest.json`` that later stages read: the
windows, the inputs read, the feature list, the categorical columns, row counts and a digest of the split files.

Memory does not grow with the table: it passes twice, a batch at a time (``prepare`` says what each pass
decides), and each split is written a row group per batch, its rows in the source's order. A table no larger
than ``leakage.SAMPLE_ROWS`` rows is decided on whole; a larger one on a uniform sample of that many rows.

    python -m ml.prepare --source data/raw/tx.parquet --target is_fraud --time-column timestamp \\
        --interval-start 2026-03-02 --interval-end 2026-03-09 --training-window-days 56 \\
        --output data/prepared/2026-03-02
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract import MAX_WINDOW_DAYS
from ml import leakage
from ml import windows as data_windows
from ml.errors import DataValidationError, StageError
from ml.runtime import ArgumentParser, bounded_int, non_negative_int
from ml.sources import Source, open_source
from ml.storage import MANIFEST, publish_by_content, publish_folder
from ml.windows import ANY_SIZE, Minimums, Windows

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: String columns with more distinct values than this (or mostly distinct values) are identifiers, not
#: categories, and are dropped unless named as features.
MAX_CATEGORIES = 1000
#: Share of a string column's values that must parse as numbers for it to count as a broken numeric column.
NUMERIC_LIKE_SHARE = 0.9
#: Distinct target values a pass over the table keeps: two are needed, more is an error that shows a few.
LABEL_VALUES_KEPT = 1000


@dataclass
class PreparedData:
    """What the prepare stage publishes next to the split files (the manifest)."""

    source: str
    target: str
    time_column: str | None
    features: list[str]
    categorical: list[str]
    rows: dict[str, int]
    positives: dict[str, int]
    #: Columns left out of the features, each with the reason (asked, an identifier, a leak, ...).
    dropped_columns: dict[str, str] = field(default_factory=dict)
    #: Columns kept although the leakage guard found something: those it only flags (a near copy of the label,
    #: a column that follows the time), and those named as features or to keep; each with the finding.
    flagged_columns: dict[str, str] = field(default_factory=dict)
    #: The target's value that is the positive class (1), as it is written in the source.
    positive_label: str = "1"
    time_ranges: dict[str, list[str]] = field(default_factory=dict)
    #: The data interval and the training and evaluation windows cut from it (empty without a time column).
    windows: dict[str, list[str]] = field(default_factory=dict)
    #: What was read: the source's files, partitions, or generated range.
    inputs: list[str] = field(default_factory=list)
    digest: str = ""
    #: Where the split files are published (with ``by_content``, a folder under the output named by the digest).
    uri: str = ""


def _check_columns_exist(
    available: list[str],
    target: str,
    time_column: str | None,
    feature_columns: Sequence[str],
    drop_columns: Sequence[str],
    keep_columns: Sequence[str] = (),
) -> None:
    """Every column the caller names is in the table, and none is named for two roles; otherwise the error names
    it (and lists the table's columns)."""
    named = [
        (target, "target"),
        *((c, "feature") for c in feature_columns),
        *((c, "kept") for c in keep_columns),
    ]
    for name, role in named:
        if name not in available:
            raise DataValidationError(name, f"{role} column not found; the table has {available}")
    if time_column and time_column not in available:
        raise DataValidationError(time_column, f"time column not found; the table has {available}")
    missing_drops = [c for c in drop_columns if c not in available]
    if missing_drops:
        raise DataValidationError(missing_drops[0], f"asked to drop it, but the table has {available}")
    for column in keep_columns:
        if column in drop_columns or column in (target, time_column):
            role = (
                "dropped"
                if column in drop_columns
                else "the target"
                if column == target
                else "the time column"
            )
            raise DataValidationError(column, f"asked to keep it as a feature, but it is also {role}")


@dataclass(frozen=True)
class Labels:
    """How the target's values become 0/1: each value the table holds (text without surrounding whitespace) and
    its class, decided on every distinct value of the table."""

    classes: dict[Any, int]
    #: The value that is the positive class, as the source writes it.
    positive: str

    @classmethod
    def of(cls, distinct: pd.Series, name: str, positive_label: str | None) -> Labels:
        """The classes of the target whose distinct values (none missing) are ``distinct``: as they are when they
        are 0/1 or true/false, otherwise 1 where they equal ``positive_label``.

        Raises:
            DataValidationError: naming the target, when it is not two-valued, or its positive label is not given
                or does not occur.
        """
        shown = sorted(map(str, distinct[:5])) + (["..."] if len(distinct) > 5 else [])
        if len(distinct) > 2:
            count = f"at least {len(distinct)}" if len(distinct) >= LABEL_VALUES_KEPT else str(len(distinct))
            raise DataValidationError(
                name, f"target must have two values; found {count} distinct values {shown}"
            )
        if len(distinct) < 2:
            raise DataValidationError(
                name, f"target has a single class ({distinct.iloc[0]}); both classes are needed"
            )
        if positive_label is None or not positive_label.strip():
            if pd.api.types.is_bool_dtype(distinct):
                return cls({False: 0, True: 1}, "True")
            if pd.api.types.is_numeric_dtype(distinct) and set(distinct) <= {0, 1}:
                return cls({value: int(value) for value in distinct}, "1")
            raise DataValidationError(
                name,
                f"target has the values {shown}: say which one is the positive class with --positive-label (the "
                "form's 'Positive label'); without it only 0/1 and true/false targets are understood",
            )
        wanted = positive_label.strip()
        matches = [v for v in distinct if str(v).strip() == wanted or _same_number(v, wanted)]
        if not matches:
            raise DataValidationError(
                name, f"the positive label {wanted!r} does not occur in the target, whose values are {shown}"
            )
        return cls({value: int(value == matches[0]) for value in distinct}, str(matches[0]))

    def encode(self, values: pd.Series, name: str) -> pd.Series:
        """The target as 0/1 (int8).

        Raises:
            DataValidationError: naming the target, for a missing value or a value beyond the two.
        """
        _no_missing_labels(int(values.isna().sum()), len(values), name)
        codes = _label_values(values).map(self.classes)
        if codes.isna().any():
            others = sorted(map(str, {*self.classes, *pd.unique(_label_values(values)[codes.isna()])[:5]}))
            raise DataValidationError(name, f"target must have two values; found more: {others[:6]}")
        return codes.astype(np.int8)


def _label_values(values: pd.Series) -> pd.Series:
    """Target values as they are compared: text without surrounding whitespace."""
    if pd.api.types.is_object_dtype(values) or isinstance(
        values.dtype, (pd.CategoricalDtype, pd.StringDtype)
    ):
        return values.astype(str).str.strip()
    return values


def _no_missing_labels(missing: int, rows: int, name: str) -> None:
    if missing and missing == rows:
        raise DataValidationError(name, "target column is entirely null")
    if missing:
        raise DataValidationError(name, f"target has {missing} missing value(s); every row needs a label")


def validate(
    frame: pd.DataFrame,
    target: str,
    *,
    time_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    keep_columns: Sequence[str] = (),
    positive_label: str | None = None,
    labels: Labels | None = None,
) -> tuple[pd.DataFrame, PreparedData]:
    """Check a raw table and return it cleaned, with the metadata of what will be learnt from it.

    The target becomes 0/1: as it is when it is 0/1 or true/false, otherwise 1 where it equals
    ``positive_label`` (text compared without surrounding whitespace). ``frame`` may be a sample of a larger
    table: then ``labels`` are the target's, decided on the whole table, and every other batch of it is cleaned
    the same way with ``clean``.

    Raises:
        DataValidationError: naming the column and the problem, for an empty table, a missing column, a target
            that is not two-valued (or whose positive label is not given or does not occur), a column that is
            entirely null, a column of unparseable values, or a time column that is not a time.
    """
    # Long on purpose: the checks read top to bottom in the order a table fails them.
    if frame.empty or len(frame.columns) == 0:
        raise DataValidationError(
            None, f"the table is empty ({len(frame)} rows, {len(frame.columns)} columns)"
        )
    frame = frame.copy(deep=False)
    frame.columns = [str(c) for c in frame.columns]
    _check_columns_exist(
        list(frame.columns), target, time_column, feature_columns or (), drop_columns, keep_columns
    )
    if labels is None:
        _no_missing_labels(int(frame[target].isna().sum()), len(frame), target)
        labels = Labels.of(pd.Series(pd.unique(_label_values(frame[target]))), target, positive_label)
    excluded = {target, *(c for c in [time_column] if c), *drop_columns}
    candidates = list(feature_columns) if feature_columns else [c for c in frame.columns if c not in excluded]
    features: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {c: "asked to drop" for c in drop_columns}
    for column in candidates:
        kind = _feature_kind(frame[column], column, explicit=bool(feature_columns) or column in keep_columns)
        if kind == "drop":
            dropped[column] = (
                "timestamp column that is not the time column"
                if pd.api.types.is_datetime64_any_dtype(frame[column])
                else f"row identifier: text with {frame[column].nunique()} distinct values in {len(frame)} rows"
            )
            log.warning("dropping column '%s': %s", column, dropped[column])
            continue
        features.append(column)
        if kind == "categorical":
            categorical.append(column)
    if not features:
        raise DataValidationError(None, "no feature columns are left to learn from")
    meta = PreparedData(
        source="",
        target=target,
        time_column=time_column or None,
        features=features,
        categorical=categorical,
        rows={},
        positives={},
        dropped_columns=dropped,
        positive_label=labels.positive,
    )
    return clean(frame, meta, labels), meta


def clean(frame: pd.DataFrame, meta: PreparedData, labels: Labels) -> pd.DataFrame:
    """A batch of the raw table as ``validate`` decided: the features, the target as 0/1 and the time column as
    UTC timestamps, in that order; categories as text, numbers as numbers.

    Raises:
        DataValidationError: naming the column, for a missing or unknown label, a time that is missing or does
            not parse, or a number that does not parse.
    """
    cleaned = {}
    for column in meta.features:
        values = frame[column]
        cleaned[column] = (
            _category_values(values) if column in meta.categorical else _number_values(values, column)
        )
    cleaned[meta.target] = labels.encode(frame[meta.target], meta.target)
    if meta.time_column:
        cleaned[meta.time_column] = _time_values(frame[meta.time_column], meta.time_column)
    return pd.DataFrame(cleaned, index=frame.index)


def _same_number(value: object, text: str) -> bool:
    """Whether a numeric (or boolean) target value is the number (or truth value) written in ``text``."""
    if isinstance(value, (bool, np.bool_)):
        return text.lower() == str(bool(value)).lower()
    if isinstance(value, (int, float, np.number)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return False


def _time_values(values: pd.Series, name: str) -> pd.Series:
    if values.isna().all():
        raise DataValidationError(name, "time column is entirely null")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataValidationError(
            name, f"time column is not a time: it holds {values.dtype} values; give ISO-8601 timestamps"
        )
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        bad = values[parsed.isna() & values.notna()]
        if len(bad):
            raise DataValidationError(
                name, f"time column is not a time: {len(bad)} value(s) do not parse, e.g. {bad.iloc[0]!r}"
            )
    if parsed.isna().any():
        raise DataValidationError(name, f"time column has {int(parsed.isna().sum())} missing value(s)")
    if parsed.dt.tz is not None:
        return parsed
    _naive_times(name)
    return parsed.dt.tz_localize("UTC")


@functools.cache
def _naive_times(name: str) -> None:
    """Say once that a time column without a zone is read as UTC (a local time read so is off by its offset)."""
    log.warning(
        "time column '%s' has no time zone: its times are taken as UTC, as the data interval's bounds are; if "
        "they are local times, write them with their offset (e.g. 2026-03-02T09:00:00+01:00)",
        name,
    )


def _feature_kind(values: pd.Series, name: str, *, explicit: bool) -> str:
    """Classify a feature column as numeric, categorical or droppable (``drop``)."""
    if values.isna().all():
        raise DataValidationError(name, "column is entirely null")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "drop"
    if isinstance(values.dtype, pd.CategoricalDtype):
        return "categorical"
    present = values.dropna()
    if not all(isinstance(v, str) for v in present.head(10_000)):
        kinds = sorted({type(v).__name__ for v in present.head(10_000)} - {"str"})
        raise DataValidationError(name, f"column holds values of unsupported type(s) {kinds}")
    parsed_share = float(pd.to_numeric(present, errors="coerce").notna().mean())
    if parsed_share >= NUMERIC_LIKE_SHARE:
        _number_values(values, name)  # names the values that do not parse
        return "numeric"
    distinct = present.nunique()
    mostly_unique = len(present) >= 100 and distinct > 0.5 * len(present)
    if (distinct > MAX_CATEGORIES or mostly_unique) and not explicit:
        return "drop"
    return "categorical"


def _number_values(values: pd.Series, name: str) -> pd.Series:
    """A numeric feature's values: as they are when numbers (booleans as 0/1), parsed when text."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.int8)
    if pd.api.types.is_numeric_dtype(values):
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() & values.notna()]
    if len(bad):
        raise DataValidationError(
            name, f"column is numeric but {len(bad)} value(s) do not parse as numbers, e.g. {bad.iloc[0]!r}"
        )
    return numbers.astype(np.float64)


def _category_values(values: pd.Series) -> pd.Series:
    """A categorical feature's values as text categories (what ``TabularEncoder`` matches clients' values on)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        if all(isinstance(c, str) for c in values.cat.categories):
            return values
        return values.astype(object).where(values.isna(), values.astype(str)).astype("category")
    return values.where(values.isna(), values.astype(str)).astype("category")


@dataclass
class Plan:
    """Which split each row goes to, decided before the rows are written: the time cuts (a time split), the
    windows and the validation cut (data windows), or how many rows of each class are still to go to each split
    (a stratified random split, drawn batch by batch with exact counts)."""

    time_column: str | None
    target: str
    #: Rows up to ``cuts[0]`` train, up to ``cuts[1]`` validate, the rest test (a time split without windows).
    cuts: tuple[pd.Timestamp, pd.Timestamp] | None = None
    windows: Windows | None = None
    #: Rows of the training window up to this time train, the later ones validate.
    validation_cut: pd.Timestamp | None = None
    #: Per class, the rows still to go to the test, validation and train splits (a random split).
    remaining: dict[int, list[int]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def assign(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """The rows of a cleaned batch, by split (rows outside both windows in none)."""
        if self.remaining:
            return self._random(frame)
        assert self.time_column
        times = frame[self.time_column]
        if self.windows is not None:
            training = (times >= self.windows.training.start) & (times < self.windows.training.end)
            early = times <= self.validation_cut
            return {
                "train": frame[training & early],
                "validation": frame[training & ~early],
                "test": frame[
                    (times >= self.windows.evaluation.start) & (times < self.windows.evaluation.end)
                ],
            }
        assert self.cuts is not None
        train_end, validation_end = self.cuts
        return {
            "train": frame[times <= train_end],
            "validation": frame[(times > train_end) & (times <= validation_end)],
            "test": frame[times > validation_end],
        }

    def _random(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        labels = frame[self.target].to_numpy()
        assignment = np.empty(len(frame), dtype=np.int8)
        for cls, remaining in self.remaining.items():
            index = np.flatnonzero(labels == cls)
            if not len(index):
                continue
            # How many of this batch's rows of the class go to each split: drawn without replacement from what
            # is left, so that the totals are exact whatever the batches.
            drawn = self.rng.multivariate_hypergeometric(remaining, len(index))
            self.rng.shuffle(index)
            for code, count in enumerate(drawn):
                assignment[index[:count]] = TEST_FIRST[code]
                index = index[count:]
                remaining[code] -= int(count)
        return {name: frame[assignment == code] for code, name in enumerate(SPLITS)}


#: The order ``Plan._random`` draws the splits in, as codes of ``SPLITS``: test, validation, train.
TEST_FIRST = (2, 1, 0)


def time_plan(times: pd.Series, meta: PreparedData, val_fraction: float, test_fraction: float) -> Plan:
    """Cut at time quantiles (of ``times``: all the rows, or a uniform sample of them) so that equal timestamps
    never straddle two splits."""
    return Plan(meta.time_column, meta.target,
                cuts=(times.quantile(1 - val_fraction - test_fraction), times.quantile(1 - test_fraction)))  # fmt: skip


def random_plan(class_rows: dict[int, int], meta: PreparedData, val_fraction: float, test_fraction: float,
                seed: int) -> Plan:  # fmt: skip
    """A stratified random split: per class, ``round(rows * fraction)`` rows to test and to validation."""
    remaining = {}
    for cls in (0, 1):
        rows = class_rows.get(cls, 0)
        n_test, n_val = round(rows * test_fraction), round(rows * val_fraction)
        remaining[cls] = [n_test, n_val, rows - n_test - n_val]
    return Plan(None, meta.target, remaining=remaining, seed=seed)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 0.9):
        raise StageError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and leave at least 10% for training"
        )


def split(
    frame: pd.DataFrame,
    meta: PreparedData,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Split a cleaned table time-based when the metadata names a time column, stratified random otherwise."""
    _check_fractions(val_fraction, test_fraction)
    if meta.time_column:
        plan = time_plan(frame[meta.time_column], meta, val_fraction, test_fraction)
    else:
        counts = frame[meta.target].value_counts()
        plan = random_plan(
            {int(k): int(v) for k, v in counts.items()}, meta, val_fraction, test_fraction, seed
        )
    parts = plan.assign(frame)
    _check_splits({n: len(p) for n, p in parts.items()}, {n: int(p[meta.target].sum()) for n, p in parts.items()},
                  meta, None)  # fmt: skip
    return parts


def _check_splits(rows: dict[str, int], positives: dict[str, int], meta: PreparedData,
                  windows: Windows | None) -> None:  # fmt: skip
    """Both classes in every split, or an error naming the split."""
    for name in SPLITS:
        classes = int(positives[name] > 0) + int(rows[name] - positives[name] > 0)
        if rows[name] and classes == 2:
            continue
        if windows is None:
            raise DataValidationError(
                meta.target,
                f"the {name} split has {rows[name]} rows and {classes} class(es); both classes are needed in every "
                "split: use more data, a longer time window or larger fractions",
            )
        window = windows.evaluation if name == "test" else windows.training
        raise DataValidationError(
            meta.target,
            f"the {name} split of the window {window} has {rows[name]} rows and {classes} class(es); both classes "
            "are needed in every split: use a longer window",
        )


def _check_minimums(
    windows: Windows, meta: PreparedData, counts: dict[str, list[int]], minimums: Minimums
) -> None:
    """Each window holds the rows (and the evaluation window the positives) ``minimums`` asks for; ``counts``
    are each window's rows and positives."""
    (training, _), (test, positives) = counts["training"], counts["evaluation"]
    problems = []
    if training < minimums.training_rows:
        problems.append(
            f"the training window {windows.training} has {training} rows (at least {minimums.training_rows} "
            "are needed)"
        )
    if test < minimums.evaluation_rows or positives < minimums.evaluation_positives:
        problems.append(
            f"the evaluation window {windows.evaluation} has {test} rows and {positives} positives (at least "
            f"{minimums.evaluation_rows} rows and {minimums.evaluation_positives} positives are needed)"
        )
    if problems:
        raise DataValidationError(
            meta.time_column, "; ".join(problems) + ": nothing is trained for this interval"
        )


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for name in SPLITS:
        with open(folder / f"{name}.parquet", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


class Sample:
    """A uniform sample of at most ``size`` rows of a stream of batches, in the stream's order, indexed by each
    row's position in it (the whole stream, as one frame, when it has no more rows than ``size``).

    Each row draws a random key; the sample is the rows with the smallest keys (bottom-k sampling), so it never
    holds more than ``size`` rows and the batch being added.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng, self.seen = size, np.random.default_rng(seed), 0
        self.frame: pd.DataFrame | None = None
        self.keys = np.empty(0)

    def add(self, batch: pd.DataFrame) -> None:
        keys = self.rng.random(len(batch))
        batch = batch.set_axis(pd.RangeIndex(self.seen, self.seen + len(batch)))
        self.seen += len(batch)
        if self.frame is not None and len(self.keys) >= self.size:
            wanted = keys < self.keys.max()
            batch, keys = batch[wanted], keys[wanted]
        frame = batch if self.frame is None else _concat([self.frame, batch])
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.size:
            kept = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
            frame, keys = frame.iloc[kept], keys[kept]
        self.frame, self.keys = frame, keys


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames one after the other, a categorical column keeping its type (the union of the categories)."""
    first = frames[0]
    for column in first.columns:
        if isinstance(first[column].dtype, pd.CategoricalDtype) and all(
            isinstance(f[column].dtype, pd.CategoricalDtype) for f in frames
        ):
            union = pd.api.types.union_categoricals([f[column] for f in frames], ignore_order=True).categories
            frames = [f.assign(**{column: f[column].cat.set_categories(union)}) for f in frames]
    return pd.concat(frames)


@dataclass
class Scan:
    """What the first pass over a source learns: a uniform sample of its rows (on which the columns' kinds and
    the leakage guard are decided), and from every row the target's values, the missing labels, the columns
    with missing values and the rows of each target value in each window."""

    sample: Sample
    rows: int = 0
    missing_labels: int = 0
    labels: pd.Series | None = None
    with_missing: set[str] = field(default_factory=set)
    #: Rows per (window, target value): the window is ``training``, ``evaluation`` or None (outside both, or no
    #: windows).
    counts: dict[tuple[str | None, Any], int] = field(default_factory=dict)


def _scan(source: Source, target: str, time_column: str | None, windows: Windows | None, seed: int) -> Scan:
    """The first pass over ``source`` (``Scan``)."""
    scan = Scan(Sample(leakage.SAMPLE_ROWS, seed))
    for batch in source.batches():
        scan.rows += len(batch)
        scan.sample.add(batch)
        scan.with_missing.update(str(c) for c, n in batch.isna().sum().items() if n)
        if target not in batch.columns:
            continue  # validate names it
        values = batch[target]
        scan.missing_labels += int(values.isna().sum())
        values = _label_values(values[values.notna()])
        distinct = pd.Series(pd.unique(values))
        known = distinct if scan.labels is None else pd.concat([scan.labels, distinct], ignore_index=True)
        scan.labels = pd.Series(pd.unique(known))[:LABEL_VALUES_KEPT]
        where = pd.Series("", index=values.index)
        if windows is not None and time_column and time_column in batch.columns:
            times = _time_values(batch[time_column], time_column)[values.index]
            where[(times >= windows.training.start) & (times < windows.training.end)] = "training"
            where[(times >= windows.evaluation.start) & (times < windows.evaluation.end)] = "evaluation"
        for (place, value), rows in pd.DataFrame({"where": where, "value": values}).value_counts().items():
            key = (place or None, value)
            scan.counts[key] = scan.counts.get(key, 0) + int(rows)
    return scan


def prepare(
    source: str,
    target: str,
    output: str,
    *,
    time_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    keep_columns: Sequence[str] = (),
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    windows: Windows | None = None,
    minimums: Minimums = ANY_SIZE,
    positive_label: str | None = None,
    by_content: bool = False,
) -> PreparedData:
    """Read, validate, split and publish a table; return the manifest that was written.

    The table passes twice, a batch at a time (``ml.sources``), so that its size does not bound what fits in
    memory: the first pass keeps a uniform sample of ``leakage.SAMPLE_ROWS`` rows and counts the target's values
    (in each window); what is learnt from which column (``validate``), the leakage guard and the time cuts are
    decided on the sample (the whole table when it is no larger), the target's classes and the windows' counts
    on every row. The second pass cleans each batch as decided and appends its rows to their split's file.

    Args:
        source: A local path, ``s3://`` URI or ``synthetic://`` URI of a CSV or Parquet table.
        target: Name of the binary target column.
        output: Folder (local path or ``s3://`` prefix) that receives the split files; replaced whole. With
            ``by_content``, the prefix under which they are published, immutably, in a folder named by their digest
            (``ml.storage.publish_by_content``; the manifest's ``uri`` says which).
        time_column: If given, split by time on this column; otherwise stratified random.
        feature_columns: Columns to learn from; by default every column but the target and time column.
        drop_columns: Columns to leave out (identifiers, leaky fields).
        keep_columns: Columns to learn from whatever the leakage guard finds (its finding is kept as a flag, in
            the manifest and the model card); the guard still screens the others.
        val_fraction: Share of rows (or of the time range's rows) for validation.
        test_fraction: Share of rows for the test split.
        seed: Seed of the random split and of the sample.
        windows: With a time column, read only these; test on the evaluation window, train on the training one.
        minimums: What each window must hold.
        positive_label: The target's positive value, when the target is not 0/1 or true/false.
        by_content: Publish under ``output`` by content (the pipeline's way: what a model version learnt from never
            changes), rather than replace ``output``.
    """
    # Long on purpose: the stage's steps in order, each one line or a call.
    if seed < 0:
        raise StageError(f"seed must be 0 or more, got {seed}")
    if windows is not None and not time_column:
        log.warning("no time column: the data interval selects no rows, and every run sees the whole table")
        windows = None
    if windows is not None and not 0 < val_fraction < 0.9:
        raise StageError(f"val_fraction ({val_fraction}) must be in (0, 0.9)")
    if windows is None:
        _check_fractions(val_fraction, test_fraction)
    with open_source(source, time_column=time_column, window=windows.whole if windows else None) as read:
        scan = _scan(read, target, time_column, windows, seed)
        log.info("read %d rows x %d columns from %s (%d input(s))", scan.rows, len(read.columns), source,
                 len(read.inputs))  # fmt: skip
        if windows is not None and not scan.rows:
            raise DataValidationError(
                time_column,
                f"the source has no rows in the training window {windows.training} nor the evaluation window "
                f"{windows.evaluation}: nothing is trained for this interval",
            )
        sample = scan.sample.frame if scan.sample.frame is not None else pd.DataFrame(columns=read.columns)
        labels = None
        if target in sample.columns and scan.rows:
            _no_missing_labels(scan.missing_labels, scan.rows, target)
            assert scan.labels is not None
            labels = Labels.of(scan.labels, target, positive_label)
        cleaned, meta = validate(
            sample, target, time_column=time_column, feature_columns=feature_columns, drop_columns=drop_columns,
            keep_columns=keep_columns, positive_label=positive_label, labels=labels,
        )  # fmt: skip
        assert labels is not None
        kept = set(feature_columns or ()) | set(keep_columns)
        _guard_leaks(cleaned, meta, windows, kept=kept, seed=seed)
        cleaned = cleaned[[*meta.features, target, *([time_column] if time_column else [])]]
        plan = _plan(scan, cleaned, meta, labels, windows, minimums, val_fraction, test_fraction, seed)
        meta.source, meta.inputs = source, read.inputs
        if windows is not None:
            meta.windows = windows.as_dict()
        _write(read, cleaned, meta, labels, plan, scan.with_missing, output, windows, by_content=by_content)
    log.info(
        "published %s: rows %s, positives %s, %d features (%d categorical)%s",
        meta.uri, meta.rows, meta.positives, len(meta.features), len(meta.categorical),
        f", dropped {meta.dropped_columns}" if meta.dropped_columns else "",
    )  # fmt: skip
    return meta


def _guard_leaks(
    frame: pd.DataFrame, meta: PreparedData, windows: Windows | None, *, kept: set[str], seed: int
) -> None:
    """Leave out the features the leakage guard drops on the training rows (``ml.leakage``), each with its
    reason; what it only flags, and the columns the caller named as features or to keep (``kept``), stay, with
    the finding recorded."""
    training = frame
    if windows is not None and meta.time_column:
        times = frame[meta.time_column]
        training = frame[(times >= windows.training.start) & (times < windows.training.end)]
    findings = leakage.screen(
        training,
        meta.target,
        meta.features,
        categorical=meta.categorical,
        time_column=meta.time_column,
        seed=seed,
    )
    left_out = set()
    for finding in findings:
        if finding.column in kept:
            meta.flagged_columns[finding.column] = f"kept as asked, although: {finding.reason}"
            log.warning("keeping '%s', as asked, although the leakage guard found: %s",
                        finding.column, finding.reason)  # fmt: skip
        elif not finding.drops:
            meta.flagged_columns[finding.column] = finding.reason
            log.warning("keeping '%s', flagged by the leakage guard: %s", finding.column, finding.reason)
        else:
            meta.dropped_columns[finding.column] = finding.reason
            left_out.add(finding.column)
            log.warning("dropping column '%s': %s", finding.column, finding.reason)
    if left_out:
        meta.features = [c for c in meta.features if c not in left_out]
        meta.categorical = [c for c in meta.categorical if c not in left_out]
        if not meta.features:
            raise DataValidationError(
                None,
                f"no feature columns are left to learn from: the leakage guard left out {sorted(left_out)} (name "
                "the ones to learn from anyway in keep_columns)",
            )


def _plan(
    scan: Scan,
    cleaned: pd.DataFrame,
    meta: PreparedData,
    labels: Labels,
    windows: Windows | None,
    minimums: Minimums,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Plan:
    """The split of every row, from the first pass's counts and the sample's times."""
    positives: dict[str | None, list[int]] = {}
    for (where, value), rows in scan.counts.items():
        counted = positives.setdefault(where, [0, 0])
        counted[0] += rows
        counted[1] += rows * labels.classes[value]
    if windows is None and meta.time_column is None:
        per_class = {1: sum(p for _, p in positives.values())}
        per_class[0] = sum(r for r, _ in positives.values()) - per_class[1]
        return random_plan(per_class, meta, val_fraction, test_fraction, seed)
    if windows is None:
        return time_plan(cleaned[meta.time_column], meta, val_fraction, test_fraction)
    _check_minimums(windows, meta, {name: positives.get(name, [0, 0]) for name in ("training", "evaluation")},
                    minimums)  # fmt: skip
    assert meta.time_column
    times = cleaned[meta.time_column]
    training = times[(times >= windows.training.start) & (times < windows.training.end)]
    return Plan(
        meta.time_column, meta.target, windows=windows, validation_cut=training.quantile(1 - val_fraction)
    )


def _write(
    read: Source,
    cleaned: pd.DataFrame,
    meta: PreparedData,
    labels: Labels,
    plan: Plan,
    with_missing: set[str],
    output: str,
    windows: Windows | None,
    *,
    by_content: bool,
) -> None:
    """The second pass into a staging folder, then the manifest with the splits' digest and where they are
    published (``meta.uri``). The folder appears whole or not at all."""
    if by_content:
        with publish_by_content(output) as publication:
            _fill(publication.staging, read, cleaned, meta, labels, plan, with_missing, windows)
            publication.key = meta.digest
            meta.uri = publication.uri
            (publication.staging / MANIFEST).write_text(json.dumps(asdict(meta), indent=2))
        return
    with publish_folder(output) as staging:
        _fill(staging, read, cleaned, meta, labels, plan, with_missing, windows)
        meta.uri = output
        (staging / MANIFEST).write_text(json.dumps(asdict(meta), indent=2))


def _fill(
    staging: Path,
    read: Source,
    cleaned: pd.DataFrame,
    meta: PreparedData,
    labels: Labels,
    plan: Plan,
    with_missing: set[str],
    windows: Windows | None,
) -> None:
    """Each batch cleaned and its rows appended to their split's file (a row group a batch); then the checks of
    the splits, their counts and time ranges, and their digest into ``meta``."""
    import pyarrow.parquet as pq

    schema = _file_schema(cleaned, meta, with_missing)
    rows = dict.fromkeys(SPLITS, 0)
    positives = dict.fromkeys(SPLITS, 0)
    ranges: dict[str, list[pd.Timestamp]] = {}
    writers = {name: pq.ParquetWriter(staging / f"{name}.parquet", schema) for name in SPLITS}
    try:
        for batch in read.batches():
            parts = plan.assign(clean(batch, meta, labels))
            for name, part in parts.items():
                if not len(part):
                    continue
                writers[name].write_table(_arrow(part, meta.time_column).cast(schema))
                rows[name] += len(part)
                positives[name] += int(part[meta.target].sum())
                if meta.time_column:
                    times = part[meta.time_column]
                    low, high = ranges.get(name, [times.min(), times.max()])
                    ranges[name] = [min(low, times.min()), max(high, times.max())]
    finally:
        for writer in writers.values():
            writer.close()
    _check_splits(rows, positives, meta, windows)
    meta.rows, meta.positives = rows, positives
    meta.time_ranges = {name: [t.isoformat() for t in ranges[name]] for name in SPLITS if name in ranges}
    meta.digest = _digest(staging)


def _file_schema(cleaned: pd.DataFrame, meta: PreparedData, with_missing: set[str]) -> Any:
    """The split files' Arrow schema, the same for every batch: the sample's types, categories as dictionaries
    of text, and as floating point an integer column that misses values anywhere in the table."""
    import pyarrow as pa

    fields = []
    sampled = _arrow(cleaned.iloc[:1000], meta.time_column).schema
    for column in cleaned.columns:
        kind = sampled.field(column).type
        if column in meta.categorical:
            kind = pa.dictionary(pa.int32(), pa.string())
        elif column == meta.time_column:
            kind = pa.timestamp("ns", tz="UTC")
        elif column in with_missing and (pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            kind = pa.float64()
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


def _arrow(frame: pd.DataFrame, time_column: str | None) -> Any:
    """The frame as an Arrow table; the (UTC) time column handed over without its zone, which the files' schema
    puts back: pyarrow reads zoned times through pandas' deprecated ``Series.values``."""
    import pyarrow as pa

    if time_column:
        frame = frame.assign(**{time_column: frame[time_column].dt.tz_convert(None)})
    return pa.Table.from_pandas(frame, preserve_index=False)


def _columns(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def _window_arguments(window: Any) -> None:
    window.add_argument("--interval-start", default="", help="the run's data interval start (ISO-8601)")
    window.add_argument("--interval-end", default="", help="the run's data interval end (ISO-8601)")
    window.add_argument(
        "--training-window-days",
        type=bounded_int(1, MAX_WINDOW_DAYS),
        help=f"days trained on before evaluation (with an interval; 1 to {MAX_WINDOW_DAYS})",
    )
    window.add_argument(
        "--evaluation-window-days",
        type=bounded_int(0, MAX_WINDOW_DAYS),
        default=0,
        help=f"days evaluated on before the end (0: the interval; at most {MAX_WINDOW_DAYS})",
    )
    window.add_argument("--min-training-rows", type=non_negative_int, default=1)
    window.add_argument("--min-evaluation-rows", type=non_negative_int, default=1)
    window.add_argument("--min-evaluation-positives", type=non_negative_int, default=1)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ml.prepare", doc=__doc__)
    parser.add_argument("--source", required=True, help="table URI: path, s3://, or synthetic://")
    parser.add_argument("--target", required=True, help="binary target column")
    parser.add_argument("--output", required=True, help="output folder (path or s3:// prefix)")
    parser.add_argument(
        "--by-content",
        action="store_true",
        help="publish under --output in a folder named by the data's digest, never replacing published data (the "
        "pipeline's way: model versions record where they learnt from); the result's prepared_uri names it",
    )
    parser.add_argument("--time-column", default="", help="split by time on this column (empty: random)")
    parser.add_argument("--features", type=_columns, default=[], help="comma-separated feature columns")
    parser.add_argument("--drop-columns", type=_columns, default=[], help="comma-separated columns to drop")
    parser.add_argument(
        "--keep-columns",
        type=_columns,
        default=[],
        help="comma-separated columns to learn from whatever the leakage guard finds (recorded as flags)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument(
        "--positive-label",
        default="",
        help="the target's positive value when it is not 0/1 or true/false (e.g. '>50K')",
    )
    _window_arguments(parser.add_argument_group("data windows (with a time column)"))
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if bool(args.interval_start) != bool(args.interval_end):
        raise StageError("give both --interval-start and --interval-end, or neither")
    if args.interval_start and args.training_window_days is None:
        raise StageError("--training-window-days is needed with an interval: how many days to train on")
    windows = (
        data_windows.plan(
            args.interval_start,
            args.interval_end,
            training_days=args.training_window_days,
            evaluation_days=args.evaluation_window_days,
        )
        if args.interval_start
        else None
    )
    meta = prepare(
        args.source,
        args.target,
        args.output,
        time_column=args.time_column or None,
        feature_columns=args.features or None,
        drop_columns=args.drop_columns,
        keep_columns=args.keep_columns,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        windows=windows,
        minimums=Minimums(args.min_training_rows, args.min_evaluation_rows, args.min_evaluation_positives),
        positive_label=args.positive_label or None,
        by_content=args.by_content,
    )
    return {"prepared_uri": meta.uri, **asdict(meta)}


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
