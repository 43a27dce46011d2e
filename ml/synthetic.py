"""A deterministic, seedable stream of synthetic card transactions whose fraud patterns drift over weeks.

Each row is one card payment. Fraud is drawn from a logistic model of the features (amount far above the
card's usual spend, card-not-present channels, risky merchant categories, night hours, distance from home,
new accounts, bursts of activity), with the intercept solved per day so that the expected fraud rate is the
one asked for. On top of that stable part, a fraud ring works one merchant category and country at a time and
moves on every few weeks, and prices inflate, so a model trained months ago scores worse on a recent week than
one retrained on recent weeks.

The stream is generated day by day, each day from its own seed: the same day has the same rows whatever range
it is asked as part of, so a training window and an evaluation window read separately agree with one read of
both. Everything is vectorised NumPy, so millions of rows take seconds.

    python -m ml.synthetic --rows 1000000 --seed 7 --output data/raw/transactions.parquet
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from contract import replacing
from ml.errors import StageError
from ml.runtime import ArgumentParser, non_negative_int

log = logging.getLogger(__name__)

MERCHANT_CATEGORIES = (
    "grocery", "restaurant", "fuel", "pharmacy", "clothing", "entertainment",
    "utilities", "electronics", "travel", "jewelry", "gaming", "money_transfer",
)  # fmt: skip
# How much each category raises the log-odds of fraud (same order as MERCHANT_CATEGORIES).
_CATEGORY_RISK = np.array([-0.6, -0.4, -0.3, -0.5, 0.0, 0.1, -0.8, 0.9, 0.8, 1.1, 1.0, 1.3])
_CATEGORY_SHARE = np.array([0.22, 0.16, 0.1, 0.07, 0.1, 0.08, 0.07, 0.06, 0.05, 0.02, 0.04, 0.03])
CHANNELS = ("chip", "contactless", "online", "phone")
_CHANNEL_RISK = np.array([-0.7, -0.3, 0.9, 1.2])
_CHANNEL_SHARE = np.array([0.35, 0.35, 0.25, 0.05])
COUNTRIES = ("domestic", "neighbour", "overseas")
_COUNTRY_RISK = np.array([-0.4, 0.3, 1.0])
_COUNTRY_SHARE = np.array([0.88, 0.08, 0.04])

# Scales the stable log-odds so that a perfect model reaches an average precision of about 0.66 at a 0.5% fraud
# rate: hard enough to be realistic, learnable enough to be useful.
_SIGNAL_STRENGTH = 3.0

# The drift. The fraud ring works the (category, country) pairs of _RING_PATH in turn, spending
# _RING_WEEKS on each and shifting its weight gradually to the next; its pair's log-odds rise by _RING_STRENGTH.
# Card spend inflates by _INFLATION a week. Both are functions of the date only (weeks since DRIFT_EPOCH).
_RING_PATH = (
    ("electronics", "overseas"), ("gaming", "neighbour"), ("grocery", "overseas"), ("fuel", "neighbour"),
    ("pharmacy", "overseas"), ("clothing", "neighbour"), ("restaurant", "overseas"), ("travel", "neighbour"),
)  # fmt: skip
_RING_WEEKS = 8.0
_RING_STRENGTH = 9.0
_INFLATION = 0.004
DRIFT_EPOCH = date(2025, 1, 6)

TARGET = "is_fraud"
TIME_COLUMN = "timestamp"
#: First day of the stream, and of a fixed-size table, unless the URI says otherwise.
DEFAULT_START = DRIFT_EPOCH.isoformat()
DEFAULT_ROWS_PER_DAY = 2000
# Days of a table read without a window, and of a fixed-size table (``rows=N``) unless ``days`` says otherwise.
DEFAULT_DAYS = 90
#: The largest table the generator makes, and the longest period: it builds the table in memory
#: (``BYTES_PER_ROW``, measured), so a mistyped size fails at once instead of exhausting the machine.
MAX_ROWS = 200_000_000
MAX_DAYS = 36_600
BYTES_PER_ROW = 52
# Row ids are the day number (since 1970) times this, plus the row's place in its day.
_IDS_PER_DAY = 10_000_000


def day_counts(rows: int, *, start: str = DEFAULT_START, days: int = DEFAULT_DAYS) -> dict[date, int]:
    """How many of ``rows`` transactions fall on each of ``days`` days from ``start``: spread evenly."""
    if rows < 1:
        raise StageError(f"rows must be at least 1, got {rows}")
    if days < 1:
        raise StageError(f"days must be at least 1, got {days}")
    _check_size(rows, days)
    first = _day(start)
    base, extra = divmod(rows, days)
    return {first + timedelta(days=i): base + (i < extra) for i in range(days)}


def generate(
    rows: int,
    *,
    seed: int = 42,
    fraud_rate: float = 0.005,
    start: str = DEFAULT_START,
    days: int = DEFAULT_DAYS,
    pattern_turns_on: date | None = None,
) -> pd.DataFrame:
    """Generate a table of ``rows`` transactions spread evenly over ``days`` days from ``start``.

    Args:
        rows: Number of transactions.
        seed: Seed of the stream; the same arguments give the same table.
        fraud_rate: Expected share of fraudulent rows, between 0.0001 and 0.2.
        start: First day of the period covered (UTC).
        days: Length of the period; timestamps are sorted and spread over it.
        pattern_turns_on: From this day on the fraud pattern turns around (the URI option of that name).

    Returns:
        A DataFrame with numeric, categorical and timestamp columns and the binary target ``is_fraud``.
    """
    return _generate_days(day_counts(rows, start=start, days=days), seed=seed, fraud_rate=fraud_rate,
                          turns_on=pattern_turns_on)  # fmt: skip


#: Rows of one row group of a table written as it is generated (``write_generated``): what it holds in memory.
ROWS_PER_GROUP = 1_000_000


def write_generated(
    rows: int,
    output: Path,
    *,
    seed: int = 42,
    fraud_rate: float = 0.005,
    start: str = DEFAULT_START,
    days: int = DEFAULT_DAYS,
) -> None:
    """Write the table ``generate`` makes to a Parquet file, a few days at a time, each a row group of about
    ``ROWS_PER_GROUP`` rows: the same rows in the same order, in memory one group at a time (a table of 100M rows
    in a few hundred MiB). Through a temporary name, so no partial file remains."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = list(day_counts(rows, start=start, days=days).items())
    per_group = max(1, ROWS_PER_GROUP // max(1, math.ceil(rows / days)))
    with replacing(output) as partial:
        writer = None
        try:
            for first in range(0, len(counts), per_group):
                frame = _generate_days(
                    dict(counts[first : first + per_group]), seed=seed, fraud_rate=fraud_rate
                )
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema)
                writer.write_table(table, row_group_size=len(frame))
        finally:
            if writer is not None:
                writer.close()


def generate_range(
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    *,
    rows_per_day: int = DEFAULT_ROWS_PER_DAY,
    seed: int = 42,
    fraud_rate: float = 0.005,
    pattern_turns_on: date | None = None,
) -> pd.DataFrame:
    """The stream's transactions with ``start <= timestamp < end`` (UTC), ``rows_per_day`` on every day."""
    if rows_per_day < 1:
        raise StageError(f"rows_per_day must be at least 1, got {rows_per_day}")
    lower, upper = pd.Timestamp(start), pd.Timestamp(end)
    lower = lower.tz_localize("UTC") if lower.tzinfo is None else lower.tz_convert("UTC")
    upper = upper.tz_localize("UTC") if upper.tzinfo is None else upper.tz_convert("UTC")
    first, last = lower.date(), (upper - pd.Timedelta(1, "ns")).date()
    _check_size(rows_per_day * ((last - first).days + 1), (last - first).days + 1)
    counts = {first + timedelta(days=i): rows_per_day for i in range((last - first).days + 1)}
    frame = _generate_days(counts, seed=seed, fraud_rate=fraud_rate, turns_on=pattern_turns_on)
    times = frame[TIME_COLUMN]
    return frame[(times >= lower) & (times < upper)].reset_index(drop=True)


def _check_size(rows: int, days: int) -> None:
    """Refuse a table larger than ``MAX_ROWS`` or longer than ``MAX_DAYS`` before allocating anything."""
    if rows > MAX_ROWS:
        raise StageError(
            f"{rows:,} rows asked for; the generator makes at most {MAX_ROWS:,} (about "
            f"{MAX_ROWS * BYTES_PER_ROW / 2**30:.0f} GiB in memory)"
        )
    if days > MAX_DAYS:
        raise StageError(f"{days:,} days asked for; the generator covers at most {MAX_DAYS:,}")


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise StageError(f"'{value}' is not a date (YYYY-MM-DD): {err}") from err


def _generate_days(
    counts: dict[date, int], *, seed: int, fraud_rate: float, turns_on: date | None = None
) -> pd.DataFrame:
    if seed < 0:
        raise StageError(f"seed must be 0 or more, got {seed}")
    if not 0.0001 <= fraud_rate <= 0.2:
        raise StageError(f"fraud_rate must be between 0.0001 and 0.2, got {fraud_rate}")
    days = [_one_day(day, n, seed=seed, fraud_rate=fraud_rate, turned=turns_on is not None and day >= turns_on)
            for day, n in counts.items() if n > 0]  # fmt: skip
    columns = {name: np.concatenate([d[name] for d in days]) for name in days[0]} if days else None
    if columns is None:
        raise StageError("the requested range holds no days")
    frame = pd.DataFrame(
        {
            "transaction_id": columns["transaction_id"],
            TIME_COLUMN: pd.to_datetime(columns["epoch_seconds"], unit="s", utc=True),
            "amount": columns["amount"],
            "merchant_category": pd.Categorical.from_codes(columns["category"], MERCHANT_CATEGORIES),
            "channel": pd.Categorical.from_codes(columns["channel"], CHANNELS),
            "country": pd.Categorical.from_codes(columns["country"], COUNTRIES),
            "card_present": columns["card_present"],
            "hour_of_day": columns["hour"],
            "account_age_days": columns["account_age_days"],
            "distance_from_home_km": columns["distance_km"],
            "txn_count_24h": columns["txn_count_24h"],
            "avg_amount_30d": columns["usual_amount"],
            TARGET: columns["is_fraud"],
        }
    )
    return frame


def _one_day(
    day: date, rows: int, *, seed: int, fraud_rate: float, turned: bool = False
) -> dict[str, np.ndarray]:
    """One day of the stream, drawn from a generator seeded by (seed, day) alone (``turned``: its fraud pattern
    turned around, every other draw the same)."""
    # Long on purpose: one generative story read top to bottom; the logit combines every draw before it.
    ordinal = (day - date(1970, 1, 1)).days
    rng = np.random.default_rng([seed, ordinal])
    weeks = (day - DRIFT_EPOCH).days / 7

    seconds = np.sort(rng.integers(0, 86_400, size=rows, dtype=np.int64))
    hour = seconds // 3600
    category = rng.choice(len(MERCHANT_CATEGORIES), size=rows, p=_CATEGORY_SHARE)
    channel = rng.choice(len(CHANNELS), size=rows, p=_CHANNEL_SHARE)
    country = rng.choice(len(COUNTRIES), size=rows, p=_COUNTRY_SHARE)

    usual_amount = rng.lognormal(mean=3.6, sigma=0.6, size=rows) * (1 + _INFLATION) ** weeks
    amount_ratio = rng.lognormal(mean=0.0, sigma=0.55, size=rows)
    amount = np.round(usual_amount * amount_ratio, 2)
    account_age_days = rng.gamma(shape=2.0, scale=400.0, size=rows)
    distance_km = rng.exponential(scale=15.0, size=rows)
    txn_count_24h = rng.poisson(lam=3.0, size=rows)
    night = ((hour >= 0) & (hour < 5)).astype(np.float64)

    logit = _SIGNAL_STRENGTH * (-1 if turned else 1) * (
        1.6 * np.log(amount_ratio)
        + _CATEGORY_RISK[category]
        + _CHANNEL_RISK[channel]
        + _COUNTRY_RISK[country]
        + 1.1 * night
        + 0.7 * np.log1p(distance_km / 10.0)
        - 0.9 * np.log1p(account_age_days / 90.0)
        + 0.25 * np.maximum(txn_count_24h - 4, 0)
    ) + _RING_STRENGTH * _ring_weight(weeks, category, country)
    probability = _sigmoid(logit + _intercept_for_rate(logit, fraud_rate))
    return {
        "transaction_id": ordinal * _IDS_PER_DAY + np.arange(rows, dtype=np.int64),
        "epoch_seconds": ordinal * 86_400 + seconds,
        "amount": amount,
        "category": category,
        "channel": channel,
        "country": country,
        "card_present": (channel < 2).astype(np.int8),
        "hour": hour.astype(np.int8),
        "account_age_days": np.round(account_age_days).astype(np.int32),
        "distance_km": np.round(distance_km, 2),
        "txn_count_24h": txn_count_24h.astype(np.int16),
        "usual_amount": np.round(usual_amount, 2),
        "is_fraud": (rng.random(rows) < probability).astype(np.int8),
    }


def _ring_weight(weeks: float, category: np.ndarray, country: np.ndarray) -> np.ndarray:
    """How much of the fraud ring each row's (category, country) pair draws at this point in time (0 to 1)."""
    phase = max(weeks, 0.0) / _RING_WEEKS
    here = math.floor(phase)
    weight = np.zeros(len(category))
    for step, share in ((here, 1 - (phase - here)), (here + 1, phase - here)):
        name, where = _RING_PATH[step % len(_RING_PATH)]
        pair = (category == MERCHANT_CATEGORIES.index(name)) & (country == COUNTRIES.index(where))
        weight[pair] += share
    return weight


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _intercept_for_rate(logit: np.ndarray, rate: float) -> float:
    """Solve for the intercept whose mean fraud probability equals ``rate`` (bisection on a sample)."""
    sample = logit[:: max(1, logit.size // 200_000)]
    low, high = -40.0, 40.0
    for _ in range(60):
        mid = (low + high) / 2
        if _sigmoid(sample + mid).mean() < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


#: The one data set ``synthetic://`` generates: ``synthetic://card-transactions?...``.
DATASET = "card-transactions"
#: What ``--output`` may end with: the formats ``write`` writes.
OUTPUT_SUFFIXES = (".parquet", ".csv")

URI_OPTIONS = {
    "rows": "a fixed-size table of this many rows over `days` days from `start`",
    "rows_per_day": f"the stream's daily volume (default {DEFAULT_ROWS_PER_DAY})",
    "seed": "seed of the stream (default 42)",
    "fraud_rate": "expected share of frauds (default 0.005)",
    "start": f"first day of the data, YYYY-MM-DD (default {DEFAULT_START})",
    "days": f"days of data: a table's length, or the stream's if given (default {DEFAULT_DAYS} for a table)",
    "pattern_turns_on": "from this day (YYYY-MM-DD) on, the fraud pattern turns around: what a model learnt to flag "
    "is the safest, the features are drawn as before (fraudsters who adapted; only labels show it)",
}


def generate_from_uri(
    uri: str, *, start: datetime | pd.Timestamp | None = None, end: datetime | pd.Timestamp | None = None
) -> pd.DataFrame:
    """The rows of ``synthetic://card-transactions?...`` whose time is in [start, end), or all of them.

    ``rows=N`` makes a fixed-size table over ``days`` days from ``start``. Otherwise the URI is a stream of
    ``rows_per_day`` rows a day from ``start`` on, ending after ``days`` days only if ``days`` is given. A
    window outside the data's days is empty, and so is an error the caller can name.
    """
    parsed = urlparse(uri)
    if parsed.netloc != DATASET or parsed.path not in ("", "/"):
        raise StageError(
            f"'{uri}' names no synthetic data set: the one there is is synthetic://{DATASET}?<options> "
            f"(options: {sorted(URI_OPTIONS)})"
        )
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    unknown = sorted(set(options) - set(URI_OPTIONS))
    if unknown:
        raise StageError(f"unknown option(s) {unknown} in '{uri}'; known: {sorted(URI_OPTIONS)}")
    if "rows" in options and "rows_per_day" in options:
        raise StageError(f"'{uri}' gives both rows and rows_per_day: a table or a stream, not both")
    try:
        seed, fraud_rate = int(options.get("seed", 42)), float(options.get("fraud_rate", 0.005))
        turns = _day(options["pattern_turns_on"]) if "pattern_turns_on" in options else None
        first = _day(options.get("start", DEFAULT_START))
        days = int(options["days"]) if "days" in options else None
        if "rows" in options:
            table = generate(
                int(options["rows"]), seed=seed, fraud_rate=fraud_rate, start=first.isoformat(),
                days=days or DEFAULT_DAYS, pattern_turns_on=turns,
            )  # fmt: skip
            return table if start is None or end is None else _within(table, start, end)
        rows_per_day = int(options.get("rows_per_day", DEFAULT_ROWS_PER_DAY))
    except ValueError as err:
        raise StageError(f"bad option in '{uri}': {err}") from err
    data_start = pd.Timestamp(first, tz="UTC")
    data_end = data_start + pd.Timedelta(days=days if days is not None else DEFAULT_DAYS)
    if start is None or end is None:
        start, end = data_start, data_end
    lower = max(_utc(start), data_start)
    upper = _utc(end) if days is None else min(_utc(end), data_end)
    if lower >= upper:
        return generate(1).iloc[:0].copy()  # the columns and types, no rows
    return generate_range(lower, upper, rows_per_day=rows_per_day, seed=seed, fraud_rate=fraud_rate,
                          pattern_turns_on=turns)  # fmt: skip


def _utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _within(
    frame: pd.DataFrame, start: datetime | pd.Timestamp, end: datetime | pd.Timestamp
) -> pd.DataFrame:
    times = frame[TIME_COLUMN]
    return frame[(times >= _utc(start)) & (times < _utc(end))].reset_index(drop=True)


def write(frame: pd.DataFrame, output: Path) -> None:
    """Write a table as Parquet or CSV (by suffix), through a temporary name so no partial file remains."""
    with replacing(output) as partial:
        if output.suffix == ".csv":
            frame.to_csv(partial, index=False)
        else:
            frame.to_parquet(partial, index=False)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(prog="python -m ml.synthetic", doc=__doc__)
    parser.add_argument("--rows", type=int, required=True, help="number of transactions")
    parser.add_argument("--seed", type=non_negative_int, default=42, help="random seed")
    parser.add_argument("--fraud-rate", type=float, default=0.005, help="expected share of frauds")
    parser.add_argument("--output", type=Path, required=True, help="a .parquet or .csv path")
    args = parser.parse_args(argv)
    if args.output.suffix not in OUTPUT_SUFFIXES:
        raise StageError(
            f"--output {args.output}: name a {' or '.join(OUTPUT_SUFFIXES)} file (the suffix says the format)"
        )
    if args.output.suffix == ".parquet":  # written as it is generated, a row group at a time
        write_generated(args.rows, args.output, seed=args.seed, fraud_rate=args.fraud_rate)
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        frauds = pc.sum(pq.read_table(args.output, columns=[TARGET])[TARGET]).as_py()
        log.info("wrote %d rows (%.3f%% fraud) to %s", args.rows, 100 * frauds / args.rows, args.output)
        return {"rows": args.rows, "output": str(args.output), "fraud_rate": frauds / args.rows}
    frame = generate(args.rows, seed=args.seed, fraud_rate=args.fraud_rate)
    write(frame, args.output)
    log.info("wrote %d rows (%.3f%% fraud) to %s", len(frame), 100 * frame[TARGET].mean(), args.output)
    return {"rows": len(frame), "output": str(args.output), "fraud_rate": float(frame[TARGET].mean())}


if __name__ == "__main__":
    from ml.runtime import run_stage

    run_stage(main)
