"""Run the inference API under uvicorn, with the limits of its settings (SERVE_* variables).

    SERVE_MODEL_URI=models:/card-fraud-detector@champion python -m ml.serve --host 0.0.0.0 --port 8000

Every caller (the image, ``make serve``, the local release, the benchmark) starts the API this way, so the limits
have one source, ``ml.serve.settings``: uvicorn's keep-alive timeout and connection limit come from there, and the
app's middleware (``ml.serve.limits``) enforces the body's size and deadline and the requests at once.

What uvicorn lacks is a deadline for the request headers (its keep-alive timeout only covers an idle connection
between requests) and, with httptools, a limit on their size. ``HeaderLimitedProtocol`` adds both to uvicorn's
httptools protocol: a connection whose request line and headers are not complete within ``header_timeout_s`` of
its opening (or, on a kept-alive connection, of the request's first byte) gets 408 and is closed, and one whose
headers exceed ``max_header_bytes`` gets 431 and is closed. Idle kept-alive connections are uvicorn's own
(``keep_alive_timeout_s``).

Workers: ``--workers`` or ``WEB_CONCURRENCY`` (one by default). Log level: ``ML_LOG_LEVEL`` (INFO by default).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ml.serve import metrics
from ml.serve.settings import ENV_FILE_VARIABLE, Settings, load_env_file

log = logging.getLogger(__name__)

APP = "ml.serve.app:create_app"
PROTOCOL = "ml.serve.server:HeaderLimitedProtocol"
#: Libraries that are chatty at INFO about what the API's log does not need.
QUIET_LOGGERS = ("urllib3", "botocore", "alembic")


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration plus the header limits ``HeaderLimitedProtocol`` reads (it travels to workers)."""

    def __init__(self, *args: Any, header_timeout_s: float, max_header_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes


class HeaderLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline and a size limit for each request's line and headers."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        # The settings' defaults under a plain uvicorn.Config (``--http ml.serve.server:HeaderLimitedProtocol``).
        defaults = Settings.model_fields
        self.header_timeout: float = getattr(config, "header_timeout_s", defaults["header_timeout_s"].default)
        self.max_header_bytes: int = getattr(config, "max_header_bytes", defaults["max_header_bytes"].default)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes, self._header_tail = 0, b""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        in_body = (cycle is not None and not cycle.response_complete) or self.transport.is_closing()
        if self._header_timer is None and not in_body:
            self._await_headers()  # a request begun on a kept-alive connection
        if self._header_timer is not None:
            # Count the bytes up to the end of the headers (which may end in this read, or straddle two), before
            # the parser hands the request to the application: an oversized request never reaches it.
            window = self._header_tail + data
            end = window.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._header_tail))
            self._header_tail = window[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, "header_too_large", f"request headers over {self.max_header_bytes} bytes")
                return
        super().data_received(data)
        if self.cycle is not cycle:  # the parser completed a request's headers
            self._stop_header_timer()

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._header_bytes, self._header_tail = 0, b""
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        # A new connection that sent nothing is just closed, like an idle kept-alive one.
        if self._header_bytes:
            self._refuse(
                408, "header_timeout", f"request headers not complete within {self.header_timeout:g} s"
            )
        elif not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._stop_header_timer()
        metrics.CONNECTIONS_CLOSED.labels(reason=reason).inc()
        self.logger.warning("%s: %s; connection closed", _client(self.client), message)
        if not self.transport.is_closing():
            body = message.encode()
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            self.transport.write(
                f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
            )
            self.transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def _client(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "a client"


def log_config(level: str) -> dict[str, Any]:
    """Everything, uvicorn's messages and the API's, to stdout at ``level``, in the stages' format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {name: {"level": "WARNING"} for name in QUIET_LOGGERS},
    }


def config(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    access_log: bool = False,
) -> ServeConfig:
    """uvicorn's configuration of the API, its limits from ``settings``."""
    return ServeConfig(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",  # uvloop where installed
        http=PROTOCOL,
        access_log=access_log,
        log_config=log_config(os.environ.get("ML_LOG_LEVEL", "INFO")),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # should a caller pick uvicorn's h11 instead
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
    )


def serve(*, host: str, port: int, workers: int = 1, access_log: bool = False) -> None:
    """Serve the API (``SERVE_*`` from the environment) until stopped; exit 1 if it cannot start."""
    loaded = load_env_file()
    if loaded:
        log.info("environment from %s: %s", os.environ[ENV_FILE_VARIABLE], ", ".join(loaded))
    try:
        settings = Settings()  # type: ignore[call-arg]  # model_uri comes from the environment
    except ValidationError as err:
        raise SystemExit(f"the API's settings (SERVE_* variables) are invalid: {err}") from None
    server_config = config(settings, host=host, port=port, workers=workers, access_log=access_log)
    server = uvicorn.Server(server_config)
    if server_config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(server_config, sockets=[server_config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY") or 1))
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, workers=args.workers, access_log=args.access_log)
