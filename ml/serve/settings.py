"""The inference API's configuration: the one place it reads its environment.

The server's limits live here too (``python -m ml.serve`` builds uvicorn's configuration from them), so the
image, ``make serve``, the local release and the benchmark run with the same limits.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: A file of ``KEY=VALUE`` lines the API adds to its environment before it reads it: the chart points it at what
#: Vault's Agent injector renders (``secrets.vault``). Variables already set win.
ENV_FILE_VARIABLE = "SERVE_ENV_FILE"


def load_env_file() -> list[str]:
    """Add the variables of ``$SERVE_ENV_FILE`` (if set) to the environment; return their names. A file that is
    named but missing or unreadable stops the start: the API never serves without the secrets it was given."""
    from dotenv import dotenv_values

    path = os.environ.get(ENV_FILE_VARIABLE)
    if not path:
        return []
    if not Path(path).is_file():
        raise SystemExit(f"{ENV_FILE_VARIABLE}={path}: no such file (was the secret rendered into the pod?)")
    values = {key: value for key, value in dotenv_values(path).items() if value is not None}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return sorted(values)


class ServingRules(BaseSettings):
    """Which versions may be served: what the API and ``ml.serve.export`` both check (prefix ``SERVE_``)."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", protected_namespaces=())

    # The production alias (plugins/mlops/platform.yaml's registry.production_alias): the version it points at is
    # served only if its canary verdict (the version tag mlops.canary_verdict) is "promoted".
    champion_alias: str = "champion"
    # Serve the champion alias whatever its version's verdict (a person moved the alias by hand on purpose).
    allow_unreleased: bool = False


class Settings(ServingRules):
    """Everything the API reads from its environment (prefix ``SERVE_``)."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", protected_namespaces=())

    model_uri: str
    # Most rows one scoring request may carry, whatever its shape (the body limit bounds JSON first).
    max_batch_size: int = 10_000
    # Largest request body, counted as it arrives (chunked bodies too): beyond it, 413 and the connection closes.
    max_body_bytes: PositiveInt = 2_000_000
    tracing: bool = False
    # Bearer token for POST /reload; unset (the default) turns reloading over HTTP off.
    admin_token: SecretStr | None = None

    # -- The prediction record (see ml/serve/recorder.py) ------------------------------------------------------
    # Where every scored row is written, as Parquet by model and day (a folder or an s3:// prefix: the platform's
    # <data root>/predictions); unset, nothing is recorded.
    record_uri: str | None = None
    # Rows waiting to be written at most; beyond it, new rows are dropped and counted (storage fell behind).
    record_max_rows: PositiveInt = 500_000
    # The writer writes every record_flush_seconds, or as soon as record_flush_rows rows wait.
    record_flush_rows: PositiveInt = 50_000
    record_flush_seconds: PositiveFloat = 10.0

    # -- Limits of the server (see ml/serve/limits.py) --------------------------------------------------------
    # Seconds from a connection's opening (or the end of its previous answer) to the end of the request's
    # headers: a client that trickles its headers is disconnected.
    header_timeout_s: PositiveFloat = 10.0
    # Largest request line and headers in bytes: beyond it, 431 and the connection closes.
    max_header_bytes: PositiveInt = 64 * 1024
    # Seconds from the end of the headers to the end of the body: a slower body gets 408 and the connection closes.
    # While it arrives, a body holds no slot of max_concurrent_requests, and its time is not the server's latency.
    body_timeout_s: PositiveFloat = 15.0
    # Seconds an idle keep-alive connection stays open (uvicorn's --timeout-keep-alive).
    keep_alive_timeout_s: PositiveInt = 5
    # Requests handled at once, each from the end of its body; beyond it, 503 with Retry-After (the probes and
    # /metrics are never refused). The bodies still arriving may hold this many times max_body_bytes in all (128 MB
    # by default); a chunk beyond gets 429 with Retry-After (the connection limit alone would allow 2 GB).
    max_concurrent_requests: PositiveInt = 64
    # Open connections at most (uvicorn's --limit-concurrency, a backstop: uvicorn answers 503 beyond it, to the
    # probes too, and its 503s are not in /metrics).
    max_connections: PositiveInt = 1000
