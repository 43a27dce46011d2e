"""Validate a table with a binary target and split it into train / validation / test Parquet files.

With a time column and a data interval (what the DAG passes), the test split is the evaluation window (the
interval) and the train and validation splits are the training window before it (``ml.windows``); only those
rows are read from the source (``ml.sources``). With a time column and no interval, the split is by time
quantiles of the whole table; without a time column, stratified random. The output folder is keyed by the
caller (the DAG passes the run's data interval), is replaced whole on a re-run, and carries a ``manifest.json``
that later stages read: the windows, the inputs read, the feature list, the categorical columns, row counts
and a digest of the split files.

    python -m ml.prepare --source data/raw/tx.parquet --target is_fraud --time-column timestamp \
        --interval-start 2026-03-02 --interval-end 2026-03-09 --training-window-days 56 \
        --output data/prepared/2026-03-02
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import leakage
from ml import windows as data_windows
from ml.errors import DataValidationError, StageError
from ml.runtime import ArgumentParser, non_negative_int
from ml.sources import Read, read_source
from ml.storage import MANIFEST, publish_folder
from ml.windows import ANY_SIZE, Minimums, Windows

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: String columns with more distinct values than this (or mostly distinct values) are identifiers, not
#: categories, and are dropped unless named as features.
MAX_CATEGORIES = 1000
#: Share of a string column's values that must parse as numbers for it to count as a broken numeric column.
NUMERIC_LIKE_SHARE = 0.9


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
    #: Columns named as features that the leakage guard flags: kept, as asked, with the warning.
    flagged_columns: dict[str, str] = field(default_factory=dict)
    #: The target's value that is the positive class (1), as it is written in the source.
    positive_label: str = "1"
    time_ranges: dict[str, list[str]] = field(default_factory=dict)
    #: The data interval and the training and evaluation windows cut from it (empty without a time column).
    windows: dict[str, list[str]] = field(default_factory=dict)
    #: What was read: the source's files, partitions, or generated range.
    inputs: list[str] = field(default_factory=list)
    digest: str = ""


def _check_columns_exist(
    available: list[str],
    target: str,
    time_column: str | None,
    feature_columns: Sequence[str],
    drop_columns: Sequence[str],
) -> None:
    """Every column the caller names is in the table; otherwise the error names it and lists the table's."""
    for name, role in [(target, "target"), *((c, "feature") for c in feature_columns)]:
        if name not in available:
            raise DataValidationError(name, f"{role} column not found; the table has {available}")
    if time_column and time_column not in available:
        raise DataValidationError(time_column, f"time column not found; the table has {available}")
    missing_drops = [c for c in drop_columns if c not in available]
    if missing_drops:
        raise DataValidationError(missing_drops[0], f"asked to drop it, but the table has {available}")


def validate(
    frame: pd.DataFrame,
    target: str,
    *,
    time_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    positive_label: str | None = None,
) -> tuple[pd.DataFrame, PreparedData]:
    """Check a raw table and return it cleaned, with the metadata of what will be learnt from it.

    The target becomes 0/1: as it is when it is 0/1 or true/false, otherwise 1 where it equals
    ``positive_label`` (text compared without surrounding whitespace).

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
    _check_columns_exist(list(frame.columns), target, time_column, feature_columns or (), drop_columns)
    frame[target], positive = _binary_target(frame[target], target, positive_label)
    if time_column:
        frame[time_column] = _time_values(frame[time_column], time_column)

    excluded = {target, *(c for c in [time_column] if c), *drop_columns}
    candidates = list(feature_columns) if feature_columns else [c for c in frame.columns if c not in excluded]
    features: list[str] = []
    categorical: list[str] = []
    dropped: dict[str, str] = {c: "asked to drop" for c in drop_columns}
    for column in candidates:
        kind, values = _feature_values(frame[column], column, explicit=bool(feature_columns))
        if kind == "drop":
            dropped[column] = (
                "timestamp column that is not the time column"
                if pd.api.types.is_datetime64_any_dtype(frame[column])
                else f"row identifier: text with {frame[column].nunique()} distinct values in {len(frame)} rows"
            )
            log.warning("dropping column '%s': %s", column, dropped[column])
            continue
        frame[column] = values
        features.append(column)
        if kind == "categorical":
            categorical.append(column)
    if not features:
        raise DataValidationError(None, "no feature columns are left to learn from")

    keep = [*features, target, *([time_column] if time_column else [])]
    meta = PreparedData(
        source="",
        target=target,
        time_column=time_column or None,
        features=features,
        categorical=categorical,
        rows={},
        positives={},
        dropped_columns=dropped,
        positive_label=positive,
    )
    return frame[keep], meta


def _binary_target(values: pd.Series, name: str, positive_label: str | None) -> tuple[pd.Series, str]:
    """The target as 0/1 and the value that became 1, as the source writes it."""
    missing = int(values.isna().sum())
    if missing == len(values):
        raise DataValidationError(name, "target column is entirely null")
    if missing:
        raise DataValidationError(name, f"target has {missing} missing value(s); every row needs a label")
    if pd.api.types.is_object_dtype(values) or isinstance(
        values.dtype, (pd.CategoricalDtype, pd.StringDtype)
    ):
        values = values.astype(str).str.strip()
    distinct = pd.unique(values)
    shown = sorted(map(str, distinct[:5])) + (["..."] if len(distinct) > 5 else [])
    if len(distinct) > 2:
        raise DataValidationError(
            name, f"target must have two values; found {len(distinct)} distinct values {shown}"
        )
    if len(distinct) < 2:
        raise DataValidationError(name, f"target has a single class ({distinct[0]}); both classes are needed")
    if positive_label is None or not positive_label.strip():
        if pd.api.types.is_bool_dtype(values):
            return values.astype(np.int8), "True"
        if pd.api.types.is_numeric_dtype(values) and set(distinct) <= {0, 1}:
            return values.astype(np.int8), "1"
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
    return (values == matches[0]).astype(np.int8), str(matches[0])


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
    # Times without a zone are UTC, as the data interval's bounds are.
    return parsed.dt.tz_localize("UTC") if parsed.dt.tz is None else parsed


def _feature_values(values: pd.Series, name: str, *, explicit: bool) -> tuple[str, pd.Series]:
    """Classify a feature column as numeric, categorical or droppable, and return its cleaned values."""
    if values.isna().all():
        raise DataValidationError(name, "column is entirely null")
    if pd.api.types.is_bool_dtype(values):
        return "numeric", values.astype(np.float32 if values.isna().any() else np.int8)
    if pd.api.types.is_numeric_dtype(values):
        return "numeric", values
    if pd.api.types.is_datetime64_any_dtype(values):
        return "drop", values
    if isinstance(values.dtype, pd.CategoricalDtype):
        return "categorical", values.cat.remove_unused_categories()

    present = values.dropna()
    if not all(isinstance(v, str) for v in present.head(10_000)):
        kinds = sorted({type(v).__name__ for v in present.head(10_000)} - {"str"})
        raise DataValidationError(name, f"column holds values of unsupported type(s) {kinds}")
    as_numbers = pd.to_numeric(present, errors="coerce")
    parsed_share = float(as_numbers.notna().mean())
    if parsed_share >= NUMERIC_LIKE_SHARE:
        if parsed_share == 1.0:
            return "numeric", pd.to_numeric(values, errors="coerce")
        bad = present[as_numbers.isna()]
        raise DataValidationError(
            name,
            f"column is numeric but {len(bad)} value(s) do not parse as numbers, e.g. {bad.iloc[0]!r}",
        )
    distinct = present.nunique()
    mostly_unique = len(present) >= 100 and distinct > 0.5 * len(present)
    if (distinct > MAX_CATEGORIES or mostly_unique) and not explicit:
        return "drop", values
    return "categorical", values.astype("category")


def split(
    frame: pd.DataFrame,
    meta: PreparedData,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Split time-based when the metadata names a time column, stratified random otherwise."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 0.9):
        raise StageError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and leave at least 10% for training"
        )
    if meta.time_column:
        parts = _split_by_time(frame, meta.time_column, val_fraction, test_fraction)
    else:
        parts = _split_stratified(frame, meta.target, val_fraction, test_fraction, seed)
    for name, part in parts.items():
        classes = part[meta.target].nunique()
        if len(part) == 0 or classes < 2:
            raise DataValidationError(
                meta.target,
                f"the {name} split has {len(part)} rows and {classes} class(es); both classes are needed in every "
                "split: use more data, a longer time window or larger fractions",
            )
    return parts


def _split_by_time(
    frame: pd.DataFrame, time_column: str, val_fraction: float, test_fraction: float
) -> dict[str, pd.DataFrame]:
    # Cut at time quantiles so that equal timestamps never straddle two splits.
    times = frame[time_column]
    train_end = times.quantile(1 - val_fraction - test_fraction)
    val_end = times.quantile(1 - test_fraction)
    order = np.argsort(times.to_numpy(), kind="stable")
    ordered = frame.iloc[order]
    ordered_times = ordered[time_column]
    return {
        "train": ordered[ordered_times <= train_end],
        "validation": ordered[(ordered_times > train_end) & (ordered_times <= val_end)],
        "test": ordered[ordered_times > val_end],
    }


def split_windows(
    frame: pd.DataFrame, meta: PreparedData, windows: Windows, *, val_fraction: float, minimums: Minimums
) -> dict[str, pd.DataFrame]:
    """Test on the evaluation window; train on the training window, validating on its latest ``val_fraction``.

    Raises:
        DataValidationError: naming the window and its counts when a window holds fewer rows or positives than
            ``minimums``, or a split lacks a class.
    """
    if not 0 < val_fraction < 0.9:
        raise StageError(f"val_fraction ({val_fraction}) must be in (0, 0.9)")
    assert meta.time_column
    times = frame[meta.time_column]
    test = frame[(times >= windows.evaluation.start) & (times < windows.evaluation.end)]
    training = frame[(times >= windows.training.start) & (times < windows.training.end)]
    positives = int(test[meta.target].sum())
    problems = []
    if len(training) < minimums.training_rows:
        problems.append(
            f"the training window {windows.training} has {len(training)} rows (at least {minimums.training_rows} "
            "are needed)"
        )
    if len(test) < minimums.evaluation_rows or positives < minimums.evaluation_positives:
        problems.append(
            f"the evaluation window {windows.evaluation} has {len(test)} rows and {positives} positives (at least "
            f"{minimums.evaluation_rows} rows and {minimums.evaluation_positives} positives are needed)"
        )
    if problems:
        raise DataValidationError(
            meta.time_column, "; ".join(problems) + ": nothing is trained for this interval"
        )
    parts = {**_split_by_time(training, meta.time_column, val_fraction, 0.0), "test": test}
    for name, part in parts.items():
        if part[meta.target].nunique() < 2:
            window = windows.evaluation if name == "test" else windows.training
            raise DataValidationError(
                meta.target,
                f"the {name} split of the window {window} has {len(part)} rows and one class; both classes are "
                "needed in every split: use a longer window",
            )
    return parts


def _split_stratified(
    frame: pd.DataFrame, target: str, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    # Per-class shuffles keep the positive rate equal across splits without sklearn's copies.
    rng = np.random.default_rng(seed)
    labels = frame[target].to_numpy()
    assignment = np.empty(len(frame), dtype=np.int8)
    for cls in (0, 1):
        index = np.flatnonzero(labels == cls)
        rng.shuffle(index)
        n_test = round(len(index) * test_fraction)
        n_val = round(len(index) * val_fraction)
        assignment[index[:n_test]] = 2
        assignment[index[n_test : n_test + n_val]] = 1
        assignment[index[n_test + n_val :]] = 0
    return {name: frame[assignment == code] for code, name in enumerate(SPLITS)}


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for name in SPLITS:
        with open(folder / f"{name}.parquet", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def prepare(
    source: str,
    target: str,
    output: str,
    *,
    time_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    windows: Windows | None = None,
    minimums: Minimums = ANY_SIZE,
    positive_label: str | None = None,
) -> PreparedData:
    """Read, validate, split and publish a table; return the manifest that was written.

    Args:
        source: A local path, ``s3://`` URI or ``synthetic://`` URI of a CSV or Parquet table.
        target: Name of the binary target column.
        output: Folder (local path or ``s3://`` prefix) that receives the split files; replaced whole.
        time_column: If given, split by time on this column; otherwise stratified random.
        feature_columns: Columns to learn from; by default every column but the target and time column.
        drop_columns: Columns to leave out (identifiers, leaky fields).
        val_fraction: Share of rows (or of the time range's rows) for validation.
        test_fraction: Share of rows for the test split.
        seed: Seed of the random split.
        windows: With a time column, read only these; test on the evaluation window, train on the training one.
        minimums: What each window must hold.
        positive_label: The target's positive value, when the target is not 0/1 or true/false.
    """
    # Long on purpose: the stage's steps in order, each one line or a call.
    if seed < 0:
        raise StageError(f"seed must be 0 or more, got {seed}")
    if windows is not None and not time_column:
        log.warning("no time column: the data interval selects no rows, and every run sees the whole table")
        windows = None
    read = _read(source, time_column, windows)
    raw = read.frame
    frame, meta = validate(
        raw, target, time_column=time_column, feature_columns=feature_columns, drop_columns=drop_columns,
        positive_label=positive_label,
    )  # fmt: skip
    del raw
    _guard_leaks(frame, meta, windows, explicit=bool(feature_columns), seed=seed)
    frame = frame[[*meta.features, target, *([time_column] if time_column else [])]]
    if windows is not None:
        parts = split_windows(frame, meta, windows, val_fraction=val_fraction, minimums=minimums)
        meta.windows = windows.as_dict()
    else:
        parts = split(frame, meta, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    del frame
    meta.source = source
    meta.inputs = read.inputs
    meta.rows = {name: len(part) for name, part in parts.items()}
    meta.positives = {name: int(part[target].sum()) for name, part in parts.items()}
    if time_column:
        meta.time_ranges = {
            name: [part[time_column].min().isoformat(), part[time_column].max().isoformat()]
            for name, part in parts.items()
        }
    _publish(parts, meta, output)
    log.info(
        "published %s: rows %s, positives %s, %d features (%d categorical)%s",
        output, meta.rows, meta.positives, len(meta.features), len(meta.categorical),
        f", dropped {meta.dropped_columns}" if meta.dropped_columns else "",
    )  # fmt: skip
    return meta


def _guard_leaks(
    frame: pd.DataFrame, meta: PreparedData, windows: Windows | None, *, explicit: bool, seed: int
) -> None:
    """Leave out the features the leakage guard flags on the training rows (``ml.leakage``), each with its
    reason; columns the caller named as features stay, with the warning recorded."""
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
    for finding in findings:
        if explicit:
            meta.flagged_columns[finding.column] = finding.reason
            log.warning("keeping '%s', named as a feature, although it looks like a leak: %s",
                        finding.column, finding.reason)  # fmt: skip
        else:
            meta.dropped_columns[finding.column] = finding.reason
            log.warning("dropping column '%s': %s", finding.column, finding.reason)
    if not explicit and findings:
        left_out = {f.column for f in findings}
        meta.features = [c for c in meta.features if c not in left_out]
        meta.categorical = [c for c in meta.categorical if c not in left_out]
        if not meta.features:
            raise DataValidationError(
                None,
                f"no feature columns are left to learn from: the leakage guard left out {sorted(left_out)}",
            )


def _read(source: str, time_column: str | None, windows: Windows | None) -> Read:
    read = read_source(source, time_column=time_column, window=windows.whole if windows else None)
    log.info("read %d rows x %d columns from %s (%d input(s))",
             len(read.frame), len(read.frame.columns), source, len(read.inputs))  # fmt: skip
    if windows is not None and read.frame.empty:
        raise DataValidationError(
            time_column,
            f"the source has no rows in the training window {windows.training} nor the evaluation window "
            f"{windows.evaluation}: nothing is trained for this interval",
        )
    return read


def _publish(parts: dict[str, pd.DataFrame], meta: PreparedData, output: str) -> None:
    """Write the splits and, last, the manifest with their digest; the folder appears whole or not at all."""
    with publish_folder(output) as staging:
        for name in SPLITS:
            parts[name].to_parquet(staging / f"{name}.parquet", index=False)
            del parts[name]
        meta.digest = _digest(staging)
        (staging / MANIFEST).write_text(json.dumps(asdict(meta), indent=2))


def _columns(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def _window_arguments(window: Any) -> None:
    window.add_argument("--interval-start", default="", help="the run's data interval start (ISO-8601)")
    window.add_argument("--interval-end", default="", help="the run's data interval end (ISO-8601)")
    window.add_argument(
        "--training-window-days", type=int, help="days trained on before evaluation (with an interval)"
    )
    window.add_argument(
        "--evaluation-window-days",
        type=int,
        default=0,
        help="days evaluated on before the end (0: the interval)",
    )
    window.add_argument("--min-training-rows", type=non_negative_int, default=1)
    window.add_argument("--min-evaluation-rows", type=non_negative_int, default=1)
    window.add_argument("--min-evaluation-positives", type=non_negative_int, default=1)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="table URI: path, s3://, or synthetic://")
    parser.add_argument("--target", required=True, help="binary target column")
    parser.add_argument("--output", required=True, help="output folder (path or s3:// prefix)")
    parser.add_argument("--time-column", default="", help="split by time on this column (empty: random)")
    parser.add_argument("--features", type=_columns, default=[], help="comma-separated feature columns")
    parser.add_argument("--drop-columns", type=_columns, default=[], help="comma-separated columns to drop")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=non_negative_int, default=42)
    parser.add_argument(
        "--positive-label",
        default="",
        help="the target's positive value when it is not 0/1 or true/false (e.g. '>50K')",
    )
    _window_arguments(parser.add_argument_group("data windows (with a time column)"))
    args = parser.parse_args(argv)
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
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        windows=windows,
        minimums=Minimums(args.min_training_rows, args.min_evaluation_rows, args.min_evaluation_positives),
        positive_label=args.positive_label or None,
    )
    return {"prepared_uri": args.output, **asdict(meta)}


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
