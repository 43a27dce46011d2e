"""The local router holds request bodies back as the cluster's nginx ingress does: it streams them to the API,
counting, and answers 413 past the limit of the stable revision's rendered Ingress without reading (or holding)
the rest. Real processes: the router as the controller starts it, a backend on a real HTTP server, the chart
rendered by Helm's own engine."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from benchmarks._abuse import HEAD, read_until_closed, upload_chunked
from ml.release.helm import Revision
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import render
from standins.rollouts.controller import Controller
from standins.rollouts.router import (
    DEFAULT_MAX_BODY_BYTES,
    NO_ROUTES,
    ROUTES_FILE,
    Router,
    Routes,
    body_limit,
    nginx_size,
    read_routes,
)
from standins.rollouts.state import Pace
from tests.conftest import ROOT, free_port

RELEASE = load_models().get("card_fraud").release
#: What the chart's default values let through its Ingress: serve.maxBodyBytes (2,000,000) as "2001k".
CHART_LIMIT = 2001 * 1024
#: How much the router's memory may grow while a body far larger than that goes through it.
RSS_GROWTH_LIMIT = 50_000_000


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's objects with ``values`` over its defaults, as the release's revision records them."""
    chart = ROOT / load_platform().release.chart
    return render(chart, values, release=RELEASE.name, namespace=RELEASE.namespace)


@pytest.mark.parametrize(
    ("values", "limit"),
    [
        ({}, CHART_LIMIT),
        ({"serve": {"maxBodyBytes": 5_000_000}}, 5001 * 1024),
        ({"ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}}}, 8 * 1024 * 1024),
        ({"ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"}}}, None),
        # No Ingress: nothing but the API in front of the API, so its own limit.
        ({"workload": {"kind": "deployment"}, "ingress": {"enabled": False}, "serve": {"maxBodyBytes": 3_000_000}},
         3_000_000),
    ],
)  # fmt: skip
def test_the_body_limit_is_the_rendered_ingress_as_nginx_reads_it(values, limit) -> None:
    assert body_limit(rendered(values)) == limit


def test_without_an_ingress_or_a_config_map_the_limit_is_the_apis_default() -> None:
    assert body_limit([]) == DEFAULT_MAX_BODY_BYTES == 2_000_000


@pytest.mark.parametrize(
    ("text", "size"),
    [("100", 100), ("2001k", 2_049_024), ("2001K", 2_049_024), ("8m", 8_388_608), ("1g", 1 << 30)],
)
def test_sizes_are_read_with_nginxs_units(text, size) -> None:
    assert nginx_size(text) == size


@pytest.mark.parametrize("text", ["", "2 MB", "2mb", "1.5m", "-1", "k"])
def test_a_size_nginx_would_refuse_is_refused(text) -> None:
    with pytest.raises(ValueError, match="is not a size nginx reads"):
        nginx_size(text)


def test_promoting_a_revision_sets_the_routers_limit_from_its_ingress(tmp_path) -> None:
    controller = Controller(
        tmp_path, "release", Pace(pause_seconds=0.1, requests_per_second=1, max_window_requests=100, port=0)
    )
    controller.path.mkdir(parents=True)
    for number, values, limit in [
        (1, {"serve": {"maxBodyBytes": 5_000_000}}, 5001 * 1024),
        (2, {}, CHART_LIMIT),
    ]:
        controller.promote(
            Revision(number, "deployed", "", values, rendered(values)), f"template {number}", None
        )
        assert read_routes(controller.path / ROUTES_FILE) == {**NO_ROUTES, "max_body_bytes": limit}


def test_routes_written_before_the_limit_existed_are_read_with_the_apis_default(tmp_path) -> None:
    path = tmp_path / ROUTES_FILE
    path.write_text(json.dumps({"stable": "http://127.0.0.1:1", "canary": None, "weight": 0}))
    assert read_routes(path) == {"stable": "http://127.0.0.1:1", "canary": None, "weight": 0,
                                 "max_body_bytes": DEFAULT_MAX_BODY_BYTES}  # fmt: skip


def test_routes_with_a_broken_limit_leave_the_last_good_ones(tmp_path) -> None:
    path = tmp_path / ROUTES_FILE
    routes = Routes(path)
    path.write_text(json.dumps({**NO_ROUTES, "stable": "http://127.0.0.1:1", "max_body_bytes": 1000}))
    assert routes.get()["max_body_bytes"] == 1000
    for broken in ("2m", -1, True):
        path.write_text(json.dumps({**NO_ROUTES, "stable": "http://127.0.0.1:2", "max_body_bytes": broken}))
        routes._seen = None  # read the file again even if its size and time look unchanged
        assert routes.get() == {**NO_ROUTES, "stable": "http://127.0.0.1:1", "max_body_bytes": 1000}


# -- A router process in front of a backend ----------------------------------------------------------------------


async def echo(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """A backend that reads each body as it comes and answers what it got: its size, its SHA-256 and how it was
    framed."""
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    answer = json.dumps({
        "path": scope["path"], "query": scope["query_string"].decode(), "bytes": size, "sha256": digest.hexdigest(),
        "content_length": (headers.get(b"content-length") or b"").decode(),
        "chunked": headers.get(b"transfer-encoding") == b"chunked",
    }).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode()),
        # As the API's binary tensor answers carry it: Triton's client cannot read them without it.
        (b"inference-header-content-length", str(len(answer)).encode()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    """``echo`` on a real HTTP server on loopback (uvicorn, in a thread of the tests' process: the router's
    memory is measured apart from it)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(echo, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the backend did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def router(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """The router process as the controller starts it, sending everything to ``backend``, its limit that of the
    chart's default Ingress."""
    router = Router(tmp_path_factory.mktemp("release"), free_port())
    router.start()
    try:
        router.stable = backend
        router.apply_ingress(rendered({}))
        yield router
    finally:
        router.stop()


def rss_growth(pid: int, action: Callable[[], Any]) -> tuple[Any, int]:
    """What ``action`` returns, and how far the resident memory of process ``pid`` rose above its start while it
    ran."""
    process = psutil.Process(pid)
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, peak[0] - before


def test_a_300_mb_chunked_upload_gets_413_and_the_router_holds_none_of_it(router: Router) -> None:
    assert router.pid is not None and router.max_body_bytes == CHART_LIMIT
    upload, growth = rss_growth(router.pid, lambda: upload_chunked(router.port, 300_000_000, chunk=65536))
    assert upload["answer"].startswith(b"HTTP/1.1 413"), upload["answer"][:300]
    assert b"413 Request Entity Too Large" in upload["answer"]
    assert upload["sent"] < 40_000_000, f"the router read {upload['sent']:,} bytes of a body over the limit"
    assert growth <= RSS_GROWTH_LIMIT, f"the router's RSS grew by {growth / 1e6:.0f} MB"


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(router: Router) -> None:
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(f"{HEAD}Content-Length: {CHART_LIMIT + 1}\r\n\r\n".encode())
        answer = read_until_closed(sock, timeout_s=5)
    assert answer.startswith(b"HTTP/1.1 413") and b"Request Entity Too Large" in answer, answer[:300]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_bodies_up_to_the_limit_reach_the_backend_intact(router: Router, framing: str) -> None:
    body = os.urandom(CHART_LIMIT)
    content: Any = (
        body if framing == "content-length" else (body[i : i + 100_000] for i in range(0, len(body), 100_000))
    )
    answer = httpx.post(f"{router.url}/v2/models/m/infer?x=1", content=content, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-served-by"] == "stable"
    assert answer.headers["inference-header-content-length"] == answer.headers["content-length"]
    assert answer.json() == {
        "path": "/v2/models/m/infer", "query": "x=1", "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        "content_length": str(len(body)) if framing == "content-length" else "", "chunked": framing == "chunked",
    }  # fmt: skip
    over = httpx.post(f"{router.url}/predict", content=(b"x" * 1024 for _ in range(CHART_LIMIT // 1024 + 1)))
    assert over.status_code == 413
    assert httpx.get(f"{router.url}/health", timeout=10).json()["bytes"] == 0


def test_a_body_without_a_limit_streams_through_without_the_router_holding_it(router: Router) -> None:
    """An Ingress whose proxy-body-size is 0 (no limit, for nginx): 150 MB reach the backend whole, and the router
    holds no more of them than a few chunks at a time."""
    assert router.pid is not None
    block, blocks = os.urandom(65536), 2300
    router.apply_ingress(
        rendered({"ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"}}})
    )
    try:
        answer, growth = rss_growth(router.pid, lambda: httpx.post(
            f"{router.url}/predict", content=(block for _ in range(blocks)), timeout=60
        ))  # fmt: skip
    finally:
        router.apply_ingress(rendered({}))
    assert answer.status_code == 200, answer.text
    assert answer.json()["bytes"] == len(block) * blocks and answer.json()["chunked"]
    sent = hashlib.sha256()
    for _ in range(blocks):
        sent.update(block)
    assert answer.json()["sha256"] == sent.hexdigest()
    assert growth <= RSS_GROWTH_LIMIT, f"the router's RSS grew by {growth / 1e6:.0f} MB"


def test_the_limit_follows_the_routes_file_and_is_the_apis_default_in_an_older_one(router: Router) -> None:
    """A routes file written before the limit existed (an older controller's) is read with the API's default."""
    path: Path = router.routes_path
    older = {"stable": router.stable, "canary": None, "weight": 0}
    path.write_text(json.dumps(older))
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(f"{HEAD}Content-Length: {DEFAULT_MAX_BODY_BYTES + 1}\r\n\r\n".encode())
            assert read_until_closed(sock, timeout_s=5).startswith(b"HTTP/1.1 413")
        answer = httpx.post(f"{router.url}/predict", content=b"x" * DEFAULT_MAX_BODY_BYTES, timeout=30)
        assert answer.status_code == 200 and answer.json()["bytes"] == DEFAULT_MAX_BODY_BYTES
    finally:
        router.apply_ingress(rendered({}))
