"""The ingress: sends each request to the canary with the current weight's probability, else to stable."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx


class RouterError(Exception):
    """The router could not start."""


class Router:
    """A reverse proxy on a loopback port whose canary share the controller moves step by step."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stable: str | None = None
        self.canary: str | None = None
        self.weight = 0
        self._server: Any = None

    def send_all_to_stable(self) -> None:
        self.weight, self.canary = 0, None

    def start(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(routes=[Route("/{path:path}", self._proxy(), methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, name="router", daemon=True).start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RouterError(f"the router did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def _proxy(self) -> Any:
        from starlette.requests import Request
        from starlette.responses import Response

        client = httpx.AsyncClient(timeout=30)

        async def proxy(request: Request) -> Response:
            to_canary = self.canary is not None and random.uniform(0, 100) < self.weight
            backend = self.canary if to_canary else self.stable
            if backend is None:
                return Response("no revision is serving yet", status_code=503)
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
            }
            try:
                answer = await client.request(
                    request.method,
                    f"{backend}{request.url.path}",
                    params=request.query_params,
                    content=await request.body(),
                    headers=headers,
                )
            except httpx.HTTPError as err:
                return Response(f"upstream error: {err}", status_code=502)
            served = {"x-served-by": "canary" if to_canary else "stable"}
            if "content-type" in answer.headers:
                served["content-type"] = answer.headers["content-type"]
            return Response(answer.content, status_code=answer.status_code, headers=served)

        return proxy
