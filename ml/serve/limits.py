"""What a request may cost the server: body size, body time and requests at once, as ASGI middleware.

- The body is received whole before the app sees the request, counted as it arrives, chunked or not: a declared
  ``Content-Length`` over the limit gets 413 before a byte is read, and a body that crosses the limit gets 413 as
  soon as it does; the rest is never read (the connection closes).
- The body must arrive within ``body_timeout_s`` of the end of the headers, else 408 and the connection closes.
- At most ``max_concurrent_requests`` requests are handled at once; beyond, 503 with ``Retry-After``. A request
  takes its slot once its body is complete (at once if it has none): a client trickling its body holds a
  connection for ``body_timeout_s`` at most, and no slot, so slow clients cannot get fast ones refused. The probes and
  ``/metrics`` are never refused: a busy pod must not be restarted or go unobserved for being busy.
- The bodies still arriving hold at most ``max_concurrent_requests * max_body_bytes`` bytes in all (as much as the
  slots' bodies may): a chunk that would cross it gets 429 with ``Retry-After``, a 4xx, since the load is the
  clients' (the connection limit alone would allow ``max_connections * max_body_bytes``, 2 GB with the defaults, the
  pod's whole memory). A body that arrives whole in one read never waits, so it is not counted: to crowd out other
  clients' uploads, a client has to keep that many bytes in flight, not merely hold sockets.
- The moment the server stops waiting for the body (it is complete, or refused) goes to ``RequestMetrics`` in the
  request's scope (``metrics.BODY_READ_AT``): the latency histogram times the server, not the client's upload.

The headers' own deadline and size are enforced below ASGI, in the HTTP protocol (``ml.serve.server``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from ml.serve.metrics import BODY_READ_AT
from ml.serve.settings import Settings

log = logging.getLogger(__name__)

#: Paths answered whatever the load: liveness, readiness and the metrics that show the load.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics", "/ping", "/v2/health/live", "/v2/health/ready"})
RETRY_AFTER = [(b"retry-after", b"1")]


class BodyRefused(Exception):
    """The body broke a limit while it was being read: the status to answer, why, and any headers to add."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


async def answer(
    send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON ``{"detail": ...}`` answer that closes the connection (what is left of the body is never read)."""
    body = orjson.dumps({"detail": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def declared_body(scope: dict[str, Any]) -> tuple[int | None, bool]:
    """The declared ``Content-Length`` (None without one) and whether the body is chunked."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


def replay(body: dict[str, Any], receive: Any) -> Any:
    """A ``receive`` that hands the app the whole body in one message, then goes on with the server's (whose next
    message is the disconnect)."""
    pending = [body]

    async def receive_body() -> dict[str, Any]:
        if pending:
            return pending.pop()
        return await receive()  # type: ignore[no-any-return]

    return receive_body


class Limits:
    """ASGI middleware enforcing the body limit, the body deadline and the concurrency limit of ``settings``."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.in_flight = 0  # requests holding a slot
        self.arriving = 0  # bytes held of bodies still arriving
        self.max_arriving = settings.max_concurrent_requests * settings.max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        length, chunked = declared_body(scope)
        if length is not None and length > limit:
            await answer(send, 413, f"body of {length} bytes is over the limit of {limit}")
            return
        if chunked or length:
            try:
                body = await self._receive_body(scope, receive)
            except BodyRefused as refused:
                log.warning("%s %s: %s", scope["method"], scope["path"], refused.message)
                await answer(send, refused.status, refused.message, refused.headers)
                return
            receive = replay(body, receive)
        counted = scope["path"] not in UNLIMITED_PATHS
        if counted and self.in_flight >= self.settings.max_concurrent_requests:
            log.warning(
                "%d requests in progress: %s %s refused", self.in_flight, scope["method"], scope["path"]
            )
            await answer(
                send, 503, f"the server is at its limit of {self.in_flight} requests at once: retry later",
                RETRY_AFTER,
            )  # fmt: skip
            return
        self.in_flight += counted
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= counted

    async def _receive_body(self, scope: dict[str, Any], receive: Any) -> dict[str, Any]:
        """The whole body as one ``http.request`` message: the server's own when it came in one, else its chunks
        joined once. Raises BodyRefused past the size limit, the deadline or the budget of bodies arriving, and
        ClientDisconnect (a 499 to ``RequestMetrics``) if the client leaves first. Either way, leaves in the scope
        when it stopped waiting for the client, where ``RequestMetrics`` starts the request's clock."""
        limit, timeout = self.settings.max_body_bytes, self.settings.body_timeout_s
        chunks: list[bytes] = []
        received = held = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message: dict[str, Any] = await receive()
                    if message["type"] != "http.request":
                        raise ClientDisconnect
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > limit:
                        raise BodyRefused(
                            413, f"body of at least {received} bytes is over the limit of {limit}"
                        )
                    if not message.get("more_body", False):
                        break
                    if self.arriving + len(chunk) > self.max_arriving:
                        raise BodyRefused(
                            429,
                            f"the server is already receiving {self.arriving - held} bytes of other bodies (its limit "
                            f"is {self.max_arriving}): retry later",
                            RETRY_AFTER,
                        )
                    chunks.append(chunk)
                    self.arriving += len(chunk)
                    held += len(chunk)
        except TimeoutError:
            raise BodyRefused(
                408, f"the body did not arrive within {timeout:g} s ({received} bytes came)"
            ) from None
        finally:
            self.arriving -= held
            scope.setdefault("state", {})[BODY_READ_AT] = time.perf_counter()
        if not chunks:
            return message
        chunks.append(chunk)
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
