"""Validating and scoring requests with the loaded model, and holding that model while it (re)loads."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic import create_model as create_pydantic_model

from ml.errors import StageError
from ml.serve import metrics
from ml.serve.model import ModelCard, Scorer, load
from ml.serve.recorder import Recorder
from ml.serve.settings import Settings

log = logging.getLogger(__name__)

# Under the record's strict config a float field takes ints and floats, never booleans or numeric strings.
Number = float | None
Category = str | None


class Prediction(BaseModel):
    probability: float
    decision: bool


class PredictResponse(BaseModel):
    """The body of a 200 from ``/predict`` (documented; built by ``Service.predict`` and serialised by orjson)."""

    model_name: str
    model_version: str
    threshold: float
    predictions: list[Prediction]


class Problem(Exception):
    """A client error: status code and a message that names the field and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def record_model(card: ModelCard) -> type[BaseModel]:
    """The pydantic model of one record: exactly the model's features, strictly typed, no NaN or infinity."""
    fields: dict[str, Any] = {
        name: (Category if name in card.categorical else Number, ...) for name in card.features
    }
    config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    return create_pydantic_model("Record", __config__=config, **fields)


def describe(error: ValidationError, batch: bool) -> str:
    """One line per problem, each naming its field: ``instances[3].amount: ...`` or ``amount: ...``."""
    parts = []
    for item in error.errors()[:10]:
        loc = item["loc"] if batch else item["loc"][1:]  # a single record is validated as a batch of one
        location = ("instances" if batch else "") + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc
        )
        parts.append(f"{location.lstrip('.')}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


#: Requests of at least this many rows are scored in a worker thread (1,000 rows take about 5 ms).
THREADED_ROWS = 1000


class Batcher:
    """Score the matrices of the requests that arrive in one turn of the event loop with one call to ``predict``.

    The first request of a turn schedules the call for the loop's next step; those that arrive before it joins
    it. Nothing waits for company: a lone request is scored at the next step, as it would have been.
    """

    def __init__(self, predict: Any) -> None:
        self.predict = predict
        self.pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []

    async def score(self, matrix: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((matrix, future))
        return await future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        try:
            scores = self.predict(
                pending[0][0] if len(pending) == 1 else np.concatenate([m for m, _ in pending])
            )
        except Exception as err:  # each request's own failure (a 500 for each, as unbatched)
            for _, future in pending:
                if not future.done():
                    future.set_exception(err)
            return
        start = 0
        for matrix, future in pending:
            if not future.done():  # its client may have left
                future.set_result(scores[start : start + len(matrix)])
            start += len(matrix)


class Service:
    """The loaded model and what validating and scoring a request needs."""

    def __init__(
        self,
        card: ModelCard,
        scorer: Scorer,
        settings: Settings,
        tracer: Any = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.card, self.scorer, self.settings, self.tracer = card, scorer, settings, tracer
        self.recorder = recorder
        self.record = record_model(card)
        self.batcher = Batcher(scorer.predict)
        self.records: TypeAdapter[list[Any]] = TypeAdapter(list[self.record])  # type: ignore[name-defined]

    def parse(self, body: bytes) -> tuple[list[dict[str, Any]], bool]:
        """Return the validated records of a request body (one record, or a batch under ``instances``), and
        whether it was a batch."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise Problem(400, f"malformed JSON: {err}") from err
        return self.records_of(payload)

    def records_of(self, payload: Any) -> tuple[list[dict[str, Any]], bool]:
        """``parse`` of a body already read as JSON."""
        if not isinstance(payload, dict):
            raise Problem(422, 'the body must be a JSON object: one record, or {"instances": [records]}')
        batch = set(payload) == {"instances"}
        records = payload["instances"] if batch else [payload]
        if not isinstance(records, list):
            raise Problem(422, "instances: must be a list of records")
        if not records:
            raise Problem(422, "instances: the batch is empty")
        if len(records) > self.settings.max_batch_size:
            raise Problem(
                422, f"instances: {len(records)} records is over the limit of {self.settings.max_batch_size}"
            )
        try:
            self.records.validate_python(records)
        except ValidationError as err:
            raise Problem(422, describe(err, batch)) from err
        return records, batch

    async def predict(self, records: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
        """Score validated records: a ``PredictResponse`` as a plain dict."""

        def overflow(row: int, column: str) -> str:
            return f"{f'instances[{row}].' if batch else ''}{column}: {records[row][column]}"

        scores = await self.score(self.scorer.matrix(records), overflow)
        threshold = self.card.threshold
        return {
            "model_name": self.card.name,
            "model_version": self.card.version,
            "threshold": threshold,
            "predictions": [{"probability": float(s), "decision": bool(s >= threshold)} for s in scores],
        }

    async def score(self, matrix: np.ndarray, overflow: Any) -> np.ndarray:
        """The positive-class probability of each row of an encoded matrix, counted in the metrics; a 422 for a
        number beyond float32's range, named by ``overflow(row, column)`` (its place and value).

        A small request is scored together with the others that arrived in the same turn of the event loop (one
        call into the model for all: its fixed cost, about 100 us, is paid once); a large one in a worker thread,
        so that the loop goes on answering meanwhile (XGBoost releases the GIL while it predicts).
        """
        overflowed = np.isinf(matrix)
        if overflowed.any():
            # The model scores float32: a number of larger magnitude would reach it as infinity.
            row, column = map(int, np.argwhere(overflowed)[0])
            raise Problem(422, f"{overflow(row, self.scorer.features[column])} is beyond float32's range")
        if self.tracer is not None:
            scores = self._score(matrix, len(matrix))
        elif len(matrix) >= THREADED_ROWS:
            scores = await asyncio.to_thread(self.scorer.predict, matrix)
        else:
            scores = await self.batcher.score(matrix)
        metrics.observe_many(metrics.PREDICTION_SCORE, scores)
        if self.recorder is not None:
            self.recorder.add(self.card, self.scorer.categories, matrix, scores)
        threshold = self.card.threshold
        positives = int(scores[0] >= threshold) if len(scores) == 1 else int((scores >= threshold).sum())
        if positives:
            metrics.DECISIONS["positive"].inc(positives)
        if positives < len(scores):
            metrics.DECISIONS["negative"].inc(len(scores) - positives)
        return scores

    def _score(self, matrix: np.ndarray, size: int) -> np.ndarray:
        if self.tracer is None:
            return self.scorer.predict(matrix)
        with self.tracer.start_as_current_span("predict") as span:
            scores = self.scorer.predict(matrix)
            span.set_attributes(
                {
                    "model.name": self.card.name,
                    "model.version": self.card.version,
                    "input.size": size,
                    "prediction.score": float(scores[0]) if len(scores) == 1 else float(scores.max()),
                    "prediction.positives": int((scores >= self.card.threshold).sum()),
                }
            )
        return scores


def settle_memory() -> None:
    """Keep the garbage collector's full passes off the hot path: what is in memory once a model has loaded (the
    libraries, the model) is moved out of the collector's sight (``gc.freeze``), so that a collection scans only what
    requests allocate. Without it, a full pass over the libraries' millions of objects stalls the event loop for
    about 100 ms several times a second under load: measured with 8 concurrent clients, a p99 latency of 120 ms
    against 2.6 ms. What a previous model left is unfrozen and collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    """The service in memory, and its (re)loading in the background.

    While a load runs, the previous service (if any) keeps answering ``/predict`` and ``/ready`` says no, so a
    load balancer drains the replica. A failed load keeps the process up for its probes and reports why.
    """

    def __init__(self, settings: Settings, tracer: Any = None) -> None:
        self.settings, self.tracer = settings, tracer
        #: Writes every scored row (``SERVE_RECORD_URI``), whichever model is loaded; started with the app.
        self.recorder = (
            Recorder(settings.record_uri, max_rows=settings.record_max_rows, flush_rows=settings.record_flush_rows,
                     flush_seconds=settings.record_flush_seconds)
            if settings.record_uri else None
        )  # fmt: skip
        self.service: Service | None = None
        self.error: str | None = None
        self.loading: asyncio.Task[None] | None = None
        #: Called after a new model is in memory (the app drops its cached OpenAPI document).
        self.on_loaded: list[Any] = []

    def start_loading(self) -> None:
        if self.loading is None:
            self.loading = asyncio.create_task(self._load())

    def stop_loading(self) -> None:
        if self.loading is not None:
            self.loading.cancel()

    async def _load(self) -> None:
        settings = self.settings
        # The production alias is served only on a "promoted" canary verdict, unless the settings allow otherwise.
        released = None if settings.allow_unreleased else settings.champion_alias
        try:
            card, scorer = await asyncio.to_thread(load, settings.model_uri, released)
        except Exception as err:  # kept for /ready to report; the process stays up for its probes
            if isinstance(err, StageError):  # a refusal that says why: no traceback
                log.error("loading %s failed: %s", settings.model_uri, err)
            else:
                log.exception("loading %s failed", settings.model_uri)
            if self.service is not None:
                log.error("still serving %s v%s", self.service.card.name, self.service.card.version)
            self.error = f"{type(err).__name__}: {err}"
            return
        finally:
            self.loading = None
        previous = self.service
        self.service, self.error = Service(card, scorer, self.settings, self.tracer, self.recorder), None
        settle_memory()
        if previous is not None:
            metrics.MODEL_INFO.remove(previous.card.name, previous.card.version)
        metrics.MODEL_INFO.labels(model_name=card.name, model_version=card.version).set(1)
        for callback in self.on_loaded:
            callback()
