"""What a request may cost the server: body size, body time and requests at once, as ASGI middleware.

- The body is counted as it arrives, chunked or not: a declared ``Content-Length`` over the limit gets 413 before
  a byte is read, and a body that crosses the limit gets 413 as soon as it does; the rest is never read (the
  connection closes), so memory stays bounded by the limit, whatever the client sends.
- The body must arrive within ``body_timeout_s`` of the end of the headers, else 408 and the connection closes
  (a client trickling its body holds a connection and a slot for that long at most).
- At most ``max_concurrent_requests`` requests are handled at once; beyond, 503 with ``Retry-After``. The probes
  and ``/metrics`` are never refused: a busy pod must not be restarted or go unobserved for being busy.
- An answer given before the body was read to its end closes the connection, rather than read the rest.

The headers' own deadline and size are enforced below ASGI, in the HTTP protocol (``ml.serve.server``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from ml.serve.settings import Settings

log = logging.getLogger(__name__)

#: Paths answered whatever the load: liveness, readiness and the metrics that show the load.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics", "/ping", "/v2/health/live", "/v2/health/ready"})


class BodyRefused(Exception):
    """The body broke a limit while it was being read: the status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


class Limits:
    """ASGI middleware enforcing the body limit, the body deadline and the concurrency limit of ``settings``."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        length, chunked = declared_body(scope)
        if length is not None and length > limit:
            await answer(send, 413, f"body of {length} bytes is over the limit of {limit}")
            return
        counted = scope["path"] not in UNLIMITED_PATHS
        if counted and self.in_flight >= self.settings.max_concurrent_requests:
            log.warning(
                "%d requests in progress: %s %s refused", self.in_flight, scope["method"], scope["path"]
            )
            await answer(
                send, 503, f"the server is at its limit of {self.in_flight} requests at once: retry later",
                [(b"retry-after", b"1")],
            )  # fmt: skip
            return
        self.in_flight += counted
        try:
            await self._handle(scope, receive, send, complete=not chunked and not length)
        finally:
            self.in_flight -= counted

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, complete: bool) -> None:
        limit, timeout = self.settings.max_body_bytes, self.settings.body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        state = {"received": 0, "complete": complete, "started": False}

        async def limited_receive() -> dict[str, Any]:
            if state["complete"]:
                return await receive()  # type: ignore[no-any-return]  # after the body: the disconnect
            try:
                async with asyncio.timeout_at(deadline):
                    message: dict[str, Any] = await receive()
            except TimeoutError:
                raise BodyRefused(
                    408, f"the body did not arrive within {timeout:g} s ({state['received']} bytes came)"
                ) from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyRefused(
                        413, f"body of at least {state['received']} bytes is over the limit of {limit}"
                    )
                state["complete"] = not message.get("more_body", False)
            return message

        async def limited_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if not state[
                    "complete"
                ]:  # answered before the whole body came: close rather than read the rest
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, limited_send)
        except BodyRefused as refused:
            log.warning("%s %s: %s", scope["method"], scope["path"], refused.message)
            if state["started"]:
                raise
            await answer(send, refused.status, refused.message)
