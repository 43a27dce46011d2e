"""The controller process's one HTTP client, for its calls to the loopback APIs, router and Prometheus.

A client builds a TLS context when it is made (about 20 ms of CPU, certificate bundle included), even for plain
HTTP: the controller's polls (readiness, request counters, queries) and each pause's replay threads made one per
call, which cost more CPU than the requests themselves. httpx's client may be shared between threads.
"""

from __future__ import annotations

import threading

import httpx

_client: httpx.Client | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    """This process's client (made on first use; each call gives its own timeout)."""
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(timeout=10)
        return _client
