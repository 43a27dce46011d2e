"""Traffic for the local canary's pauses: what the release's clients send, replayed at a steady rate.

A cluster's canary is judged on real requests, shaped for the model in production; on a bare machine there are
none, so each pause replays single-record ``/predict`` calls built from the test split of the data the *stable*
model was trained on (its train run's ``mlops.prepared_uri`` tag), typed as clients send them, to the new and the
stable model alike. A new model that cannot serve them (trained without an input the clients send) answers 4xx,
which the analysis's client-errors measures, as it would in production.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx

from contract import PREPARED_URI_TAG
from standins.rollouts import http

log = logging.getLogger(__name__)


class NoTraffic(Exception):
    """There is nothing to replay."""


def prepared_uri_of(model_uri: str) -> str | None:
    """The prepared data a registered version (``models:/<name>/<version>``) learnt from, if it is known."""
    from mlflow import MlflowClient

    name, _, version = model_uri.removeprefix("models:/").partition("/")
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    return client.get_run(run_id).data.tags.get(PREPARED_URI_TAG) if run_id else None


class Traffic:
    """Replays records as single-record /predict calls at a steady rate."""

    def __init__(self, records: list[dict[str, Any]], requests_per_second: float, clients: int = 8) -> None:
        self.records = records
        self.rate = requests_per_second
        self.clients = clients
        self._cursor = 0

    @classmethod
    def from_prepared(cls, prepared_uri: str, requests_per_second: float) -> Traffic:
        """The test split's features, typed as clients send them (``ml.schema.to_model_input``)."""
        from ml.schema import to_model_input
        from ml.storage import read_manifest, read_published_table

        manifest = read_manifest(prepared_uri)
        table = read_published_table(prepared_uri, "test.parquet")[manifest["features"]].head(5000)
        frame = to_model_input(table, manifest["categorical"])
        records = json.loads(frame.to_json(orient="records"))  # NaN becomes null, numpy types plain JSON
        if not records:
            raise NoTraffic(f"the test split of {prepared_uri} has no rows to replay")
        return cls(records, requests_per_second)

    @classmethod
    def for_model(cls, model_uri: str, requests_per_second: float) -> Traffic | None:
        """Traffic from the data the model learnt from; None (with a warning) when that is unknown."""
        prepared_uri = prepared_uri_of(model_uri)
        if not prepared_uri:
            log.warning("%s names no prepared data: the analysis will see only real traffic", model_uri)
            return None
        return cls.from_prepared(prepared_uri, requests_per_second)

    def replay(
        self, url: str | list[str], seconds: float, should_stop: threading.Event, requests: int = 0
    ) -> int:
        """Send ``rate * seconds`` requests (at least ``requests``) over ``seconds``, each record to every one of
        ``url``; returns how many were answered."""
        urls = [url] if isinstance(url, str) else url
        total = max(1, int(self.rate * seconds), requests)
        interval = self.clients * seconds / total
        answered = [0] * self.clients

        def client(index: int) -> None:
            started = time.monotonic()
            for n in range(index, total, self.clients):
                if should_stop.is_set():
                    return
                record = self.records[(self._cursor + n) % len(self.records)]
                for target in urls:
                    try:
                        http.client().post(f"{target}/predict", json=record)
                        answered[index] += 1
                    except httpx.HTTPError:
                        pass
                pause = started + (n // self.clients + 1) * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._cursor += total
        return sum(answered)
