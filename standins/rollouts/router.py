"""The ingress: sends each request to the canary with the current weight's probability, else to stable.

The router is a process of its own (``python -m standins.rollouts.router``), as the ingress of a cluster is no
part of the Argo Rollouts controller: it keeps serving the stable API when the controller fails or is killed.
The controller moves the split by rewriting ``routes.json`` (atomically: the router never reads half a file); the
router reads it again whenever it changed, and keeps the last good routes when it cannot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract import write_json
from standins.rollouts import ROUTER_COMMAND, terminate

log = logging.getLogger(__name__)
#: The split the controller sets and the router process follows, beside the release's status.
ROUTES_FILE = "routes.json"
NO_ROUTES: dict[str, Any] = {"stable": None, "canary": None, "weight": 0}


class RouterError(Exception):
    """The router could not start."""


class Router:
    """The controller's handle on the router process: setting ``stable``, ``canary`` or ``weight`` moves traffic."""

    def __init__(self, release_dir: Path, port: int) -> None:
        self.routes_path = Path(release_dir) / ROUTES_FILE
        self.log_path = Path(release_dir) / "router.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.pid: int | None = None
        self._routes = dict(NO_ROUTES)

    @property
    def stable(self) -> str | None:
        return self._routes["stable"]  # type: ignore[no-any-return]

    @stable.setter
    def stable(self, url: str | None) -> None:
        self._publish(stable=url)

    @property
    def canary(self) -> str | None:
        return self._routes["canary"]  # type: ignore[no-any-return]

    @canary.setter
    def canary(self, url: str | None) -> None:
        self._publish(canary=url)

    @property
    def weight(self) -> int:
        return int(self._routes["weight"])

    @weight.setter
    def weight(self, weight: int) -> None:
        self._publish(weight=int(weight))

    def send_all_to_stable(self) -> None:
        self._publish(weight=0, canary=None)

    def start(self) -> None:
        """Start the router process on ``port`` and return once it accepts connections."""
        self._publish()
        with self.log_path.open("a") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", ROUTER_COMMAND, "--port", str(self.port), "--routes", str(self.routes_path)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pid = process.pid
        deadline = time.monotonic() + 15
        while not _listening(self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = " | ".join(self.log_path.read_text().strip().splitlines()[-3:])
                raise RouterError(f"the router did not start on port {self.port}: {tail}")
            time.sleep(0.05)

    def adopt(self, pid: int) -> None:
        """Take over the router a previous controller left serving, and the routes it follows."""
        self.pid = pid
        self._routes = read_routes(self.routes_path) or dict(NO_ROUTES)

    def stop(self) -> None:
        if self.pid is not None:
            terminate(self.pid, ROUTER_COMMAND)

    def _publish(self, **changes: Any) -> None:
        self._routes = {**self._routes, **changes}
        write_json(self.routes_path, self._routes)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_routes(path: Path) -> dict[str, Any] | None:
    """The routes in ``path``; None (with a warning) when they cannot be read."""
    try:
        routes = json.loads(path.read_text())
        if not isinstance(routes, dict) or set(routes) != set(NO_ROUTES):
            raise ValueError(f"expected the keys {sorted(NO_ROUTES)}")
        return routes
    except (OSError, ValueError) as err:
        log.warning("cannot read the routes in %s (%s): keeping the last good ones", path, err)
        return None


class Routes:
    """The router process's view of ``routes.json``: read again when the file changed, else the last good."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = dict(NO_ROUTES)
        self._seen: tuple[int, int, int] | None = None

    def get(self) -> dict[str, Any]:
        try:
            stat = os.stat(self.path)
        except OSError:
            return self.current
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen = seen
            self.current = read_routes(self.path) or self.current
        return self.current


def app(routes: Routes) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/{path:path}", _proxy(routes), methods=["GET", "POST"])])


def _proxy(routes: Routes) -> Any:
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response

    client = httpx.AsyncClient(timeout=30)

    async def proxy(request: Request) -> Response:
        now = routes.get()
        to_canary = now["canary"] is not None and random.uniform(0, 100) < now["weight"]
        backend = now["canary"] if to_canary else now["stable"]
        if backend is None:
            return Response("no revision is serving yet", status_code=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
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
        for header in ("content-type", "retry-after"):  # what a client acts on (a 503's Retry-After)
            if header in answer.headers:
                served[header] = answer.headers[header]
        return Response(answer.content, status_code=answer.status_code, headers=served)

    return proxy


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog=f"python -m {ROUTER_COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--routes", type=Path, required=True, help="the routes file the controller writes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    uvicorn.run(
        app(Routes(args.routes)), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
