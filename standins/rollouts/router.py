"""The ingress: sends each request to the canary with the current weight's probability, else to stable.

The router is a process of its own (``python -m standins.rollouts.router``), as the ingress of a cluster is no
part of the Argo Rollouts controller: it keeps serving the stable API when the controller fails or is killed.
The controller moves the split by rewriting ``routes.json`` (atomically: the router never reads half a file); the
router reads it again whenever it changed, and keeps the last good routes when it cannot.

Request bodies stream through to the API, counted as they arrive, and are held back as the cluster's nginx ingress
holds them: beyond the stable revision's ``nginx.ingress.kubernetes.io/proxy-body-size`` (its rendered Ingress, read
with nginx's units), 413 "Request Entity Too Large" and the connection closes with the rest of the body unread; a
declared ``Content-Length`` over it gets the 413 before a byte of the body is read. Without an Ingress (a plain
Deployment, or the ingress off) nothing but the API stands in front of it, so its own limit applies. The answer
streams back as it comes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from contract import write_json
from ml.release import chart
from ml.serve.settings import Settings
from standins.rollouts import ROUTER_COMMAND, terminate

log = logging.getLogger(__name__)
#: The split the controller sets and the router process follows, beside the release's status.
ROUTES_FILE = "routes.json"
#: The API's own body limit when nothing else says (``SERVE_MAX_BODY_BYTES``'s default).
DEFAULT_MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default
#: The routes before the controller set any. ``max_body_bytes`` (None: no limit) came later: a routes file
#: without it is read with this default.
NO_ROUTES: dict[str, Any] = {
    "stable": None,
    "canary": None,
    "weight": 0,
    "max_body_bytes": DEFAULT_MAX_BODY_BYTES,
}
#: The Ingress annotation that sets nginx's ``client_max_body_size``, and ingress-nginx's value without it.
BODY_SIZE_ANNOTATION = "nginx.ingress.kubernetes.io/proxy-body-size"
NGINX_DEFAULT_BODY_SIZE = "1m"
#: nginx's size suffixes (``ngx_parse_offset``), in bytes.
NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
#: Headers that belong to one connection, never forwarded (RFC 9110, section 7.6.1); ``Host`` is the backend's.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})  # fmt: skip
#: What nginx answers a body over its limit.
TOO_LARGE_PAGE = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


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

    @property
    def max_body_bytes(self) -> int | None:
        """The largest request body let through (None: no limit)."""
        return self._routes["max_body_bytes"]  # type: ignore[no-any-return]

    @max_body_bytes.setter
    def max_body_bytes(self, limit: int | None) -> None:
        self._publish(max_body_bytes=limit)

    def apply_ingress(self, objects: list[dict[str, Any]]) -> None:
        """Hold request bodies back as the ingress the revision's rendered ``objects`` describe does.

        Raises:
            ValueError: Its body size is not one nginx reads (the routes stay as they were).
        """
        self.max_body_bytes = body_limit(objects)

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
    """The routes in ``path`` (one written before ``max_body_bytes`` existed has its default); None (with a
    warning) when they cannot be read."""
    try:
        routes = json.loads(path.read_text())
        required = set(NO_ROUTES) - {"max_body_bytes"}
        if not isinstance(routes, dict) or not required <= set(routes) <= set(NO_ROUTES):
            raise ValueError(f"expected the keys {sorted(NO_ROUTES)} (max_body_bytes may be missing)")
        routes = {**NO_ROUTES, **routes}
        limit = routes["max_body_bytes"]
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ValueError(f"max_body_bytes: {limit!r} is not a size in bytes")
        return routes
    except (OSError, ValueError) as err:
        log.warning("cannot read the routes in %s (%s): keeping the last good ones", path, err)
        return None


def nginx_size(text: str) -> int:
    """A size as nginx reads ``client_max_body_size`` (``ngx_parse_offset``): bytes, or with ``k``, ``m`` or ``g``
    (either case) that many KiB, MiB or GiB.

    Raises:
        ValueError: ``text`` is not such a size (nginx would refuse its configuration).
    """
    found = re.fullmatch(r"([0-9]+)([kKmMgG]?)", text)
    if found is None:
        raise ValueError(f"{text!r} is not a size nginx reads: digits, then optionally k, m or g")
    return int(found[1]) * NGINX_UNITS[found[2].lower()]


def body_limit(objects: list[dict[str, Any]]) -> int | None:
    """The largest request body that reaches a revision's API, from its rendered ``objects``.

    With an Ingress, its ``proxy-body-size`` as nginx reads it (ingress-nginx's ``1m`` without the annotation; None
    for ``0``, which nginx reads as no limit). Without one, only the API limits bodies: its ConfigMap's
    ``SERVE_MAX_BODY_BYTES``, else the API's default.

    Raises:
        ValueError: The annotation is not a size nginx reads, or the ConfigMap's limit is not a number.
    """
    ingress = chart.find(objects, "Ingress")
    if ingress is not None:
        annotations = ingress.get("metadata", {}).get("annotations") or {}
        size = nginx_size(str(annotations.get(BODY_SIZE_ANNOTATION, NGINX_DEFAULT_BODY_SIZE)).strip())
        return size or None
    config_map = chart.find(objects, "ConfigMap") or {}
    return int((config_map.get("data") or {}).get("SERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


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


class BodyTooLarge(Exception):
    """A request's body crossed the limit while it streamed to the backend."""


class Upload:
    """A request's body as it streams to the backend, counted: past ``limit``, BodyTooLarge, and nothing more of it
    is read. ``complete`` once the client sent it all."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int | None) -> None:
        self.chunks, self.limit = chunks, limit
        self.received, self.complete = 0, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.received += len(chunk)
            if self.limit is not None and self.received > self.limit:
                raise BodyTooLarge(
                    f"a body of at least {self.received} bytes is over the limit of {self.limit}"
                )
            if chunk:
                yield chunk
        self.complete = True


def _proxy(routes: Routes) -> Any:
    import httpx
    from starlette.background import BackgroundTask
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response, StreamingResponse

    client = httpx.AsyncClient(timeout=30)
    # The router ends the connection (the rest of the body unread) as nginx does after its 413.
    closing = {"connection": "close"}

    def too_large(request: Request, why: str) -> Response:
        log.warning("%s %s: 413, %s", request.method, request.url.path, why)
        return Response(TOO_LARGE_PAGE, status_code=413, media_type="text/html", headers=closing)

    async def proxy(request: Request) -> Response:
        now = routes.get()
        to_canary = now["canary"] is not None and random.uniform(0, 100) < now["weight"]
        backend = now["canary"] if to_canary else now["stable"]
        if backend is None:
            return Response("no revision is serving yet", status_code=503)
        limit = now["max_body_bytes"]
        declared = request.headers.get("content-length", "")
        length = int(declared) if declared.isdigit() else None
        if limit is not None and length is not None and length > limit:
            return too_large(request, f"a declared body of {length} bytes is over the limit of {limit}")
        # A request has a body only if it says so (RFC 9112, section 6.3): a GET is sent on without one.
        has_body = bool(length) or "transfer-encoding" in request.headers
        upload = Upload(request.stream(), limit) if has_body else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        outgoing = client.build_request(request.method, f"{backend}{request.url.path}",
                                        params=request.query_params, content=upload, headers=headers)  # fmt: skip
        try:
            answer = await client.send(outgoing, stream=True)
        except BodyTooLarge as err:
            return too_large(request, str(err))
        except ClientDisconnect:
            return Response(status_code=499)  # nobody reads it: the client left before its body was sent
        except httpx.HTTPError as err:
            unread = upload is not None and not upload.complete
            return Response(f"upstream error: {err}", status_code=502, headers=closing if unread else None)
        served = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"date", "server"}}
        served["x-served-by"] = "canary" if to_canary else "stable"
        if upload is not None and not upload.complete:
            served.update(closing)  # the API answered before the body ended: the rest is never read
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=served,
                                 background=BackgroundTask(answer.aclose))  # fmt: skip

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
