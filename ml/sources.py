"""Read the rows of a source table, or only those in a time window, touching as little of the source as it can.

A source is one of:

- one CSV or Parquet table, a local path or ``s3://`` URI (a Parquet folder counts as one table). With a
  window, Parquet is filtered on the time column inside the reader, so row groups outside the window are
  skipped; CSV cannot be, so its rows are filtered after parsing;
- a folder of Hive-style date partitions (``.../dt=2026-03-02/part-0.parquet``, any key whose values are
  dates): only the partitions of the window's days are listed in and read, and a missing day is an error;
- a URI with a ``{date}`` placeholder (``s3://bucket/tx/{date:%Y/%m/%d}.parquet``; plain ``{date}`` is
  ``YYYY-MM-DD``): one table per day of the window, each of which must exist;
- ``synthetic://card-transactions?...`` (``ml.synthetic``), generated for the window's days only.

Partitions are days in UTC. What was read is reported as ``Source.inputs``, for the manifest's lineage.

``open_source`` hands the rows out a batch at a time (at most ``BATCH_ROWS``), as often as they are asked for:
Parquet is scanned a row group at a time, so a table of any size passes in the memory of one batch. CSV has no
row groups and no types: it is parsed whole (with pandas' type inference), then handed out in batches; a table
too large for that belongs in Parquet; its separator (a comma, a semicolon, a tab or a bar) is read from its first
lines. ``read_source`` reads a whole source into one frame.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ml.errors import StageError
from ml.storage import SYNTHETIC_SCHEME, is_remote, s3_client, split_s3, table_format
from ml.windows import Window

log = logging.getLogger(__name__)

DATE_PLACEHOLDER = re.compile(r"\{date(?::[^{}]*)?\}")
_HIVE_DATE = re.compile(r"^(?P<key>[A-Za-z_]\w*)=(?P<day>\d{4}-\d{2}-\d{2})$")
#: How many missing partitions an error lists before it counts the rest.
_SHOWN = 5
#: Rows of a batch: a million rows of a dozen columns is about 100 MiB in pandas.
BATCH_ROWS = 1_000_000


@dataclass
class Source:
    """A source's rows, a batch at a time, and the files (or partitions, or generated range) they come from."""

    #: Each call scans the rows again, in the same order and the same batches.
    batches: Callable[[], Iterator[pd.DataFrame]]
    #: The table's columns, also when no row is read.
    columns: list[str]
    inputs: list[str] = field(default_factory=list)


@dataclass
class Read:
    """A source's rows in one frame, and the inputs they came from."""

    frame: pd.DataFrame
    inputs: list[str] = field(default_factory=list)


def read_source(uri: str, *, time_column: str | None = None, window: Window | None = None) -> Read:
    """Read a source whole, or only what lies in ``window`` on ``time_column``, into one frame."""
    with open_source(uri, time_column=time_column, window=window) as source:
        return Read(_whole(source), source.inputs)


@contextmanager
def open_source(
    uri: str, *, time_column: str | None = None, window: Window | None = None
) -> Iterator[Source]:
    """The source at ``uri``, or only what lies in ``window`` on ``time_column`` (see the module's docstring),
    readable until the block ends (an S3 table is downloaded once, to a temporary folder)."""
    if window is not None and not time_column:
        raise StageError("a window needs a time column to select rows by")
    scheme = urlparse(uri).scheme
    if scheme == SYNTHETIC_SCHEME:
        from ml.synthetic import generate_from_uri

        frame = (
            generate_from_uri(uri, start=window.start, end=window.end) if window else generate_from_uri(uri)
        )
        yield _in_memory(frame, [f"{uri} {window}" if window else uri])
        return
    if scheme not in ("", "file", "s3"):
        raise StageError(f"unsupported URI scheme '{scheme}' in '{uri}' (use a path, s3:// or synthetic://)")
    if DATE_PLACEHOLDER.search(uri):
        if window is None:
            raise StageError(f"'{uri}' names one table per {{date}}: it needs a data interval to read")
        uris = _days(uri, window)
    else:
        partitions = day_partitions(uri) if window is not None else {}
        uris = _partitions(uri, partitions, window) if partitions and window is not None else [uri]
    with _tables(uris, time_column, window) as source:
        yield source


def _in_memory(frame: pd.DataFrame, inputs: list[str]) -> Source:
    """A frame already read, handed out in batches."""

    def batches() -> Iterator[pd.DataFrame]:
        for start in range(0, len(frame), BATCH_ROWS):
            yield frame.iloc[start : start + BATCH_ROWS]

    return Source(batches, [str(c) for c in frame.columns], inputs)


def _days(uri: str, window: Window) -> list[str]:
    uris = [_on_day(uri, day) for day in window.days()]
    missing = [u for u in uris if not exists(u)]
    if missing:
        raise StageError(
            f"{len(missing)} of the {len(uris)} daily tables of the window {window} are missing: {_listed(missing)}"
        )
    return uris


def _on_day(uri: str, day: date) -> str:
    """The URI with each ``{date}`` / ``{date:<strftime>}`` placeholder filled in for ``day``."""
    return DATE_PLACEHOLDER.sub(lambda match: str(match.group(0)).format(date=day), uri)


def day_partitions(uri: str) -> dict[date, str]:
    """The day partitions right under a folder (``key=YYYY-MM-DD``), by day; empty if it is not so laid out."""
    found: dict[date, str] = {}
    for name in _children(uri):
        match = _HIVE_DATE.match(name)
        if match:
            found[date.fromisoformat(match["day"])] = uri.rstrip("/") + "/" + name
    return found


def _partitions(uri: str, partitions: dict[date, str], window: Window) -> list[str]:
    wanted = window.days()
    missing = [day.isoformat() for day in wanted if day not in partitions]
    if missing:
        raise StageError(
            f"'{uri}' has no partition for {len(missing)} of the {len(wanted)} days of the window {window}: "
            f"{_listed(missing)} (it has {min(partitions)} to {max(partitions)}, {len(partitions)} days)"
        )
    return [partitions[day] for day in wanted]


def _listed(items: list[str]) -> str:
    """The first few items, and how many more."""
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


@contextmanager
def _tables(uris: list[str], time_column: str | None, window: Window | None) -> Iterator[Source]:
    """The rows of each table (a file or a Parquet folder, local or S3), one table after the other."""
    with ExitStack() as stack:
        paths = [stack.enter_context(_local_copy(uri)) for uri in uris]
        formats = [
            "parquet" if path.is_dir() else table_format(uri) for uri, path in zip(uris, paths, strict=True)
        ]
        if "csv" not in formats:
            yield _parquet(paths, time_column, window, uris)
            return
        frames = [
            _read_csv(path) if fmt == "csv" else _whole(_parquet([path], time_column, window, [uri]))
            for uri, path, fmt in zip(uris, paths, formats, strict=True)
        ]
        yield _in_memory(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True), uris)


def _whole(source: Source) -> pd.DataFrame:
    frames = list(source.batches())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=source.columns)


def _parquet(paths: list[Path], time_column: str | None, window: Window | None, uris: list[str]) -> Source:
    """Parquet tables scanned a batch at a time, one after the other, the window pushed into the scan when the
    time column is a timestamp (row groups outside it are skipped). A column that a table lacks is empty in
    its rows, as ``pd.concat`` would have it."""
    try:
        tables = [ds.dataset(path, format="parquet", partitioning="hive") for path in paths]
    except (ValueError, OSError, pa.ArrowException) as err:
        raise StageError(f"cannot parse {', '.join(uris[:2])} as parquet: {err}") from err
    columns = list(dict.fromkeys(name for table in tables for name in table.schema.names))

    def batches() -> Iterator[pd.DataFrame]:
        for table, uri in zip(tables, uris, strict=True):
            condition = _time_filter(table.schema, time_column, window) if time_column and window else None
            try:
                # A row group at a time, read when asked for: Arrow's scanner reads ahead, and holds more of a
                # large file the larger it is. Files and row groups outside the window are skipped unread.
                for fragment in table.get_fragments(filter=condition):
                    for group in fragment.split_by_row_group(filter=condition):
                        frame = group.to_table(filter=condition, schema=table.schema).to_pandas()
                        if list(frame.columns) != columns:
                            frame = frame.reindex(columns=columns)
                        for start in range(0, len(frame), BATCH_ROWS):
                            yield frame.iloc[start : start + BATCH_ROWS]
            except (ValueError, OSError, pa.ArrowException) as err:
                raise StageError(f"cannot parse '{uri}' as parquet: {err}") from err

    return Source(batches, columns, uris)


#: Separators a CSV file may use; the one its first lines use is taken (and logged when it is not a comma).
CSV_SEPARATORS = ",;\t|"


def _read_csv(path: Path) -> pd.DataFrame:
    files = sorted(path.glob("*.csv*")) if path.is_dir() else [path]
    try:
        return pd.concat([pd.read_csv(p, sep=_separator(p), low_memory=False) for p in files])
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise StageError(f"cannot parse '{path}' as csv: {err}") from err


def _separator(path: Path) -> str:
    """The separator of a CSV file's columns, from its first lines (a comma unless they say otherwise)."""
    import csv

    with pd.io.common.get_handle(path, "r", compression="infer", errors="replace") as handle:
        head = handle.handle.read(64 * 1024)
    try:
        separator = csv.Sniffer().sniff("\n".join(head.splitlines()[:20]), delimiters=CSV_SEPARATORS)
    except csv.Error:
        return ","
    if separator.delimiter != ",":
        log.info("%s: columns separated by %r", path, separator.delimiter)
    return str(separator.delimiter)


def _time_filter(schema: pa.Schema, column: str, window: Window) -> ds.Expression | None:
    """``start <= column < end`` in the column's own type, or None when the reader cannot compare it."""
    if column not in schema.names:
        return None  # prepare names the missing column
    kind = schema.field(column).type
    if pa.types.is_timestamp(kind):
        zone = kind.tz
        bounds = [t.tz_convert(zone) if zone else t.tz_convert("UTC").tz_localize(None)
                  for t in (window.start, window.end)]  # fmt: skip
        lower, upper = (pa.scalar(b.to_pydatetime(), type=kind) for b in bounds)
    elif pa.types.is_date(kind):
        # A date is its day's midnight: keep every day the window touches; prepare makes the exact cut.
        first, last = window.start.date(), (window.end - pd.Timedelta(1, "ns")).date()
        return (ds.field(column) >= pa.scalar(first, type=kind)) & (
            ds.field(column) <= pa.scalar(last, type=kind)
        )
    else:
        return None  # text or numbers: parsed and filtered by prepare
    return (ds.field(column) >= lower) & (ds.field(column) < upper)


def _children(uri: str) -> list[str]:
    """Names of the entries right under a folder, local or S3 (empty if it is a file or absent)."""
    if is_remote(uri):
        bucket, prefix = split_s3(uri.rstrip("/") + "/")
        pages = (
            s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        )
        return [
            p["Prefix"][len(prefix) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])
        ]
    path = _local_path(uri)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def exists(uri: str) -> bool:
    """Whether a file, or a folder (an S3 prefix) with something in it, is at ``uri``."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        return bool(s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount"))
    return _local_path(uri).exists()


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


@contextmanager
def _local_copy(uri: str) -> Iterator[Path]:
    """A local path of the table or folder at ``uri``: itself, or a temporary download of an S3 object or prefix."""
    if not is_remote(uri):
        path = _local_path(uri)
        if not path.exists():
            raise StageError(f"input table '{uri}' does not exist")
        yield path
        return
    bucket, key = split_s3(uri)
    client = s3_client()
    with tempfile.TemporaryDirectory(prefix="source-") as tmp:
        listing = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        keys = [obj["Key"] for page in listing for obj in page.get("Contents", [])]
        if key in keys:  # one object
            local = Path(tmp) / Path(key).name
            client.download_file(bucket, key, str(local))
            yield local
            return
        prefix = key.rstrip("/") + "/"
        inside = [k for k in keys if k.startswith(prefix) and not k.endswith("/")]
        if not inside:
            raise StageError(f"input table '{uri}' does not exist")
        for one in inside:
            local = Path(tmp) / one[len(prefix) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, one, str(local))
        yield Path(tmp)
