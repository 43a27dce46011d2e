"""Traffic for the local canary's pauses: what the release's clients send, replayed at a steady rate.

A cluster's canary is judged on real requests, shaped for the model in production; on a bare machine there are
none, so each pause replays single-record ``/predict`` calls built from the test split of the data the *stable*
model was trained on (its train run's ``mlops.prepared_uri`` tag), typed as clients send them, to the new and the
stable model alike. A new model that cannot serve them (trained without an input the clients send) answers 4xx,
which the analysis's client-errors measures, as it would in production.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from contract import PREPARED_URI_TAG

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
        #: Each record's body, encoded once.
        self.bodies = [json.dumps(record).encode() for record in records]
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
            connections: dict[str, Connection] = {}
            try:
                for n in range(index, total, self.clients):
                    if should_stop.is_set():
                        return
                    body = self.bodies[(self._cursor + n) % len(self.bodies)]
                    for target in urls:
                        if target not in connections:
                            connections[target] = Connection(target)
                        answered[index] += connections[target].predict(body)
                    pause = started + (n // self.clients + 1) * interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
            finally:
                for connection in connections.values():
                    connection.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._cursor += total
        return sum(answered)


class Connection:
    """One replay client's kept-alive connection to a server (the standard library's client: its CPU per request is
    a third of httpx's, and the replay sends thousands per pause), opened again after a failed request."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port, f"{parts.path}/predict"
        self.http: http.client.HTTPConnection | None = None

    def predict(self, body: bytes) -> bool:
        """POST ``body`` to ``/predict``; whether an answer came (of any status)."""
        try:
            if self.http is None:
                self.http = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self.http.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
            self.http.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            self.close()
            return False

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
