"""Every scored row, recorded for the production feedback loop: what the model saw, what it answered, and when.

The monitoring DAG joins these rows with the labels that arrive later, to measure each version's live quality and
drift. ``Service.score`` hands each scored matrix to ``Recorder.add``, which copies its rows into a chunk of
arrays allocated once (a few microseconds: the request's answer never waits on storage); a writer thread turns
each full chunk (``record_flush_rows`` rows), and every ``record_flush_seconds`` the one being filled, into Parquet
files, one per model version and day:

    <SERVE_RECORD_URI>/<model name>/date=<YYYY-MM-DD>/<version>-<writer id>-<sequence>.parquet

(a local folder, or ``s3://``: a file appears whole, by rename on disk and by one PUT on S3). Each row carries
``request_id`` (the request's ``X-Request-ID``, or one the API made up), ``row`` (its place in the request),
``id`` (the row's own id: the header's value for a one-row request, or the header's n comma-separated values
for n rows, e.g. transaction ids, which the labels are keyed by), ``time``, ``model_name``, ``model_version``,
``threshold``, every feature as the model saw it (float32; an unknown category or a missing value is null),
``score`` and ``decision``.

The buffer holds ``record_max_rows`` rows at most (chunks of ``record_flush_rows`` rows of 4 bytes per feature and
about 30 bytes more: 500,000 rows of 30 features, about 75 MB). Nothing is dropped silently: a full buffer refuses the newest rows and counts them
(``prediction_records_dropped_total{reason="buffer_full"}``); a failed write keeps its rows for the next attempt
and counts the error; the alert ``InferenceApiPredictionRecordsLost`` fires on either. On shutdown (a SIGTERM:
a rolling restart, a scale-down) the writer writes what is buffered before the process exits, so a restart loses no
answered row; a killed process loses at most one flush interval's rows.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml.serve import metrics

log = logging.getLogger(__name__)

#: The request being scored: its ``X-Request-ID`` (or one made up), set by the scoring routes.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
HEADER = "x-request-id"


#: Made-up request ids: this process's prefix and a counter (unique across replicas and restarts, and cheaper than
#: a UUID per request).
_PROCESS = uuid.uuid4().hex[:12]
_COUNTER = itertools.count()


def request_id(headers: Any) -> str:
    """The request's id: its ``X-Request-ID`` header, or a new one."""
    return str(headers.get(HEADER) or f"{_PROCESS}-{next(_COUNTER)}")


class Chunk:
    """Scored rows of one model version, in arrays allocated once: the hot path copies a request's rows in (a few
    microseconds), and the writer turns a chunk into a table with no loop over requests, so it holds the GIL (and
    the event loop waiting for it) only briefly."""

    def __init__(self, card: Any, categories: dict[str, list[str]], capacity: int, width: int) -> None:
        self.card, self.categories, self.capacity, self.size = card, categories, capacity, 0
        self.matrix = np.empty((capacity, width), dtype=np.float32)
        self.scores = np.empty(capacity, dtype=np.float64)
        self.times = np.empty(capacity, dtype=np.float64)
        self.request = np.empty(capacity, dtype=np.int32)  # index into request_ids
        self.row = np.empty(capacity, dtype=np.int32)
        self.id = np.empty(capacity, dtype=np.int32)  # index into ids, -1: none
        self.request_ids: list[str] = []
        self.ids: list[str] = []

    def take(self, at: float, request_id: str, matrix: np.ndarray, scores: np.ndarray, start: int) -> int:
        """Copy a request's rows from ``start`` on, as many as fit; return how many."""
        total = len(scores)
        if total == 1 and self.size < self.capacity:  # the commonest request, without slices and ranges
            at_row = self.size
            self.matrix[at_row], self.scores[at_row], self.times[at_row] = matrix[0], scores[0], at
            self.request[at_row], self.row[at_row], self.id[at_row] = len(self.request_ids), 0, len(self.ids)
            self.request_ids.append(request_id)
            self.ids.append(request_id.strip())  # a one-row request's id is the row's
            self.size += 1
            return 1
        count = min(total - start, self.capacity - self.size)
        first, last = self.size, self.size + count
        self.matrix[first:last] = matrix[start : start + count]
        self.scores[first:last] = scores[start : start + count]
        self.times[first:last] = at
        self.request[first:last] = len(self.request_ids)
        self.request_ids.append(request_id)
        self.row[first:last] = np.arange(start, start + count)
        listed = [request_id] if total == 1 else request_id.split(",") if "," in request_id else []
        if len(listed) == total:
            self.id[first:last] = np.arange(len(self.ids), len(self.ids) + count)
            self.ids.extend(part.strip() for part in listed[start : start + count])
        else:
            self.id[first:last] = -1
        self.size = last
        return count


class Recorder:
    """A bounded buffer of scored rows (chunks of ``flush_rows``) and the thread that writes it to Parquet."""

    def __init__(self, uri: str, *, max_rows: int, flush_rows: int, flush_seconds: float) -> None:
        self.uri = uri.rstrip("/")
        self.max_rows, self.flush_rows, self.flush_seconds = max_rows, flush_rows, flush_seconds
        self.current: Chunk | None = None
        self.sealed: list[Chunk] = []
        self.rows = 0  # rows buffered, in chunks not yet written
        self.writer_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sequence = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prediction-recorder", daemon=True)

    def start(self) -> Recorder:
        self.thread.start()
        return self

    def add(
        self, card: Any, categories: dict[str, list[str]], matrix: np.ndarray, scores: np.ndarray
    ) -> None:
        """Buffer one request's rows; refuse (and count) them if the buffer is full."""
        total = len(scores)
        with self.lock:
            if self.rows + total > self.max_rows:
                metrics.RECORDS_DROPPED.labels(reason="buffer_full").inc(total)
                return
            at, request_id, start = time.time(), REQUEST_ID.get(), 0
            while start < total:
                chunk = self.current
                if chunk is None or chunk.card is not card:  # a new model version starts a chunk of its own
                    self._seal()
                    chunk = self.current = Chunk(card, categories, self.flush_rows, matrix.shape[1])
                start += chunk.take(at, request_id, matrix, scores, start)
                if chunk.size == chunk.capacity:  # a full chunk is written at once
                    self._seal()
                    self.wake.set()
            self.rows += total
            buffered = self.rows
        metrics.RECORDS_BUFFERED.set(buffered)

    def _seal(self) -> None:
        """Hand the chunk being filled to the writer (the lock held). It does not wake the writer: a flush seals
        the chunk being filled, and a writer woken by its own flush would write a file of a few rows at a time,
        without pause (it once did: a sixth of the API's single-record throughput)."""
        if self.current is not None and self.current.size:
            self.sealed.append(self.current)
        self.current = None

    def close(self, timeout: float = 30.0) -> None:
        """Write what is buffered and stop the writer."""
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.error("the prediction recorder did not finish writing within %.0f s", timeout)

    def _run(self) -> None:
        while True:
            self.wake.wait(self.flush_seconds)
            self.wake.clear()
            stopping = self.stopping.is_set()
            self.flush()
            if stopping:
                return

    def flush(self) -> None:
        """Write the buffered rows; what fails to be written is kept for the next attempt."""
        with self.lock:
            self._seal()
            chunks, self.sealed = self.sealed, []
        for position, chunk in enumerate(chunks):
            try:
                self._write(chunk)
            except Exception:
                log.exception("writing %d recorded predictions to %s failed; kept for the next attempt",
                              sum(c.size for c in chunks[position:]), self.uri)  # fmt: skip
                metrics.RECORD_WRITE_ERRORS.inc()
                with self.lock:
                    self.sealed[:0] = chunks[position:]
                return
            with self.lock:
                self.rows -= chunk.size
                buffered = self.rows
            metrics.RECORDS_WRITTEN.inc(chunk.size)
            metrics.RECORDS_BUFFERED.set(buffered)

    def _write(self, chunk: Chunk) -> None:
        """The chunk's rows as one Parquet file per day (UTC) they were scored on."""
        table = rows_table(chunk)
        days = (chunk.times[: chunk.size] // 86400).astype(np.int64)
        for day in np.unique(days):
            part = table if len(np.unique(days)) == 1 else table.filter(days == day)
            name = datetime.fromtimestamp(int(day) * 86400, UTC).strftime("%Y-%m-%d")
            self.sequence += 1
            put_parquet(f"{self.uri}/{chunk.card.name}/date={name}/{chunk.card.version}-{self.writer_id}-"
                        f"{self.sequence:06d}.parquet", part)  # fmt: skip


def rows_table(chunk: Chunk) -> Any:
    """A chunk's rows as an Arrow table (see the module's docstring for the columns)."""
    import pyarrow as pa

    card, size = chunk.card, chunk.size

    def strings(indices: np.ndarray, values: list[str]) -> Any:
        missing = indices < 0
        codes = pa.array(
            np.where(missing, 0, indices).astype(np.int32), mask=missing if missing.any() else None
        )
        return pa.DictionaryArray.from_arrays(codes, pa.array(values or [""], type=pa.string())).cast(
            pa.string()
        )

    constant = np.zeros(size, dtype=np.int32)
    columns: dict[str, Any] = {
        "request_id": strings(chunk.request[:size], chunk.request_ids),
        "row": pa.array(chunk.row[:size]),
        "id": strings(chunk.id[:size], chunk.ids),
        "time": pa.array((chunk.times[:size] * 1e6).astype(np.int64), type=pa.timestamp("us", tz="UTC")),
        "model_name": strings(constant, [card.name]),
        "model_version": strings(constant, [str(card.version)]),
        "threshold": pa.array(np.full(size, card.threshold, dtype=np.float64)),
    }
    # A feature's values in one contiguous array (one transposing copy): Arrow takes each without copying it again.
    by_feature = np.ascontiguousarray(chunk.matrix[:size].T)
    for values, feature in zip(by_feature, card.features, strict=True):
        missing = np.isnan(values)
        if feature in chunk.categories:
            codes = np.where(missing, -1, values).astype(np.int32)
            columns[feature] = strings(codes, chunk.categories[feature])
        else:
            # float32, as the model saw it: half the bytes of float64 to build, write and store.
            columns[feature] = pa.array(values, mask=missing if missing.any() else None)
    scores = chunk.scores[:size]
    columns["score"] = pa.array(scores)
    columns["decision"] = pa.array(scores >= card.threshold)
    return pa.table(columns)


def put_parquet(uri: str, table: Any) -> None:
    """Write ``table`` to ``uri`` whole: to a temporary name and renamed on disk, one PUT on S3."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # LZ4, and dictionaries for the strings only: about half snappy's CPU with every column dictionary-encoded, which
    # matters in a process that serves (3.3 MB against 4.2 MB for 50,000 rows of 30 features).
    # Statistics (each column's minimum and maximum) for the time only: a reader selects by day and time, and the
    # others' cost a quarter of the write.
    options = {
        "compression": "lz4",
        "use_dictionary": [f.name for f in table.schema if pa.types.is_string(f.type)],
        "write_statistics": ["time"],
    }
    if uri.startswith("s3://"):
        from ml.storage import s3_client, split_s3

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial, **options)
    os.replace(partial, path)
