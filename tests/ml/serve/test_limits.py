"""The API's limits against abusive clients, on a real server (``python -m ml.serve``) over real sockets.

The server runs with short deadlines and a low concurrency limit (set through its ``SERVE_*`` environment, as a
pod's would be), so that each abuse is cut within seconds.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._abuse import HEAD as JSON_HEAD
from benchmarks._abuse import read_until_closed, upload_chunked
from tests.conftest import ROOT, free_port
from tests.helpers import CHAMPION, wait_until_answering
from tests.ml.serve.test_app import MODEL, registered  # noqa: F401 - the fixture shared with the API tests

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONCURRENT = 3
MAX_BODY = 2_000_000
#: How late after its deadline a connection may still be closed (a loaded test machine).
MARGIN_S = 2.0


class Api:
    """The server process, its address and its log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def statuses(self, path: str = "/predict") -> dict[str, float]:
        """``http_requests_total`` of ``path`` by status."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            sample.labels["status"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_requests_total" and sample.labels["path"] == path
        }

    def latencies(self, path: str = "/predict") -> dict[str, float]:
        """``http_request_duration_seconds`` of ``path``, all methods together: each bucket by its upper bound,
        and the count."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        observed: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("http_request_duration_seconds_") and sample.labels["path"] == path:
                    part = sample.name.removeprefix("http_request_duration_seconds_")
                    key = sample.labels["le"] if part == "bucket" else part
                    observed[key] = observed.get(key, 0) + sample.value
        return observed

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)


@pytest.fixture(scope="module")
def api(registered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:  # noqa: F811
    port, log = free_port(), tmp_path_factory.mktemp("api") / "api.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SERVE_MODEL_URI": f"models:/{MODEL}@{CHAMPION}",
        "SERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "SERVE_MAX_CONCURRENT_REQUESTS": str(MAX_CONCURRENT),
        "SERVE_MAX_BODY_BYTES": str(MAX_BODY),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ml.serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    server = Api(process, port, log)
    try:
        wait_until_answering(f"{server.url}/ready", process, log, timeout_s=120)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def connect(api: Api) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=10)


def trickle(sock: socket.socket, byte: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``byte`` every 0.2 s until the server answers or closes; return the time that took and the answer."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            return time.monotonic() - started, read_until_closed(sock)
        try:
            sock.send(byte)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started, b""
    raise AssertionError(f"the server still reads a trickling client after {limit_s} s")


def test_a_chunked_body_over_the_limit_gets_413_at_once_and_memory_stays_bounded(api: Api) -> None:
    before, peak, done = api.rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], api.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        uploads = [upload_chunked(api.port, 300_000_000, chunk=65536) for _ in range(3)]
    finally:
        done.set()
        sampler.join()
    for upload in uploads:
        answer, sent = upload["answer"], upload["sent"]
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"over the limit of 2000000" in answer
        assert sent < 40_000_000, f"the server read {sent:,} bytes of a body over the limit"
    assert peak[0] - before < 50_000_000, f"RSS grew by {(peak[0] - before) / 1e6:.0f} MB"


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(api: Api) -> None:
    with connect(api) as sock:
        sock.sendall(f"{JSON_HEAD}Content-Length: 300000000\r\n\r\n".encode())
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"body of 300000000 bytes is over the limit" in answer


def test_trickling_headers_are_cut_at_the_header_deadline(api: Api) -> None:
    with connect(api) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        took, answer = trickle(sock, b"a", HEADER_TIMEOUT_S + MARGIN_S + 5)
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + MARGIN_S
    assert answer.startswith(b"HTTP/1.1 408")


def test_trickling_headers_on_a_kept_alive_connection_are_cut_too(api: Api, registered) -> None:  # noqa: F811
    body = orjson.dumps(registered["records"][0])
    with connect(api) as sock, sock.makefile("rb") as answers:
        sock.sendall(f"{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert answers.readline().startswith(b"HTTP/1.1 200")
        headers = dict(line.decode().lower().split(": ", 1) for line in iter(answers.readline, b"\r\n"))
        answers.read(int(headers["content-length"]))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        took, answer = trickle(sock, b"a", HEADER_TIMEOUT_S + MARGIN_S + 5)
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + MARGIN_S
    assert answer.startswith(b"HTTP/1.1 408")


def test_headers_over_the_size_limit_get_431(api: Api) -> None:
    with connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * (64 * 1024 + 1))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431")
    families = text_string_to_metric_families(httpx.get(f"{api.url}/metrics", timeout=10).text)
    closed = {
        s.labels["reason"]: s.value
        for f in families
        for s in f.samples
        if s.name == "http_connections_closed_total"
    }
    assert closed["header_too_large"] >= 1


def test_complete_headers_over_the_size_limit_in_one_read_get_431_too(api: Api) -> None:
    """The whole request, headers ended and all, in one send: counted before the parser hands it on."""
    with connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * (64 * 1024 + 100) + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(api: Api) -> None:
    with connect(api) as sock:
        started = time.monotonic()
        assert read_until_closed(sock, timeout_s=HEADER_TIMEOUT_S + MARGIN_S + 5) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S


def test_a_trickling_body_gets_408_at_the_body_deadline(api: Api) -> None:
    with connect(api) as sock:
        sock.sendall(f"{JSON_HEAD}Content-Length: 1000\r\n\r\n{{".encode())
        took, answer = trickle(sock, b" ", BODY_TIMEOUT_S + MARGIN_S + 5)
    assert BODY_TIMEOUT_S - 0.5 < took < BODY_TIMEOUT_S + MARGIN_S
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer


def test_keep_alive_still_serves_one_request_after_another(api: Api, registered) -> None:  # noqa: F811
    body = orjson.dumps(registered["records"][0])
    with connect(api) as sock, sock.makefile("rb") as answers:
        for _ in range(2):
            sock.sendall(f"{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = answers.readline()
            headers = dict(line.decode().lower().split(": ", 1) for line in iter(answers.readline, b"\r\n"))
            assert status.startswith(b"HTTP/1.1 200") and "connection" not in headers
            assert orjson.loads(answers.read(int(headers["content-length"])))["predictions"]


def test_a_client_that_leaves_mid_body_is_a_499_not_a_server_error(api: Api) -> None:
    before = api.statuses()
    with connect(api) as sock:
        sock.sendall(f"{JSON_HEAD}Content-Length: 10000\r\n\r\n".encode() + b'{"amount": 1' + b" " * 100)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while (after := api.statuses()).get("499", 0) == before.get("499", 0):
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert after["499"] == before.get("499", 0) + 1
    errors = {status: count for status, count in after.items() if status.startswith("5")}
    assert errors == {status: count for status, count in before.items() if status.startswith("5")}
    log = api.log.read_text()
    assert "the client closed the connection before its request was read" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_a_body_not_sent_as_json_gets_415(api: Api, registered) -> None:  # noqa: F811
    body = orjson.dumps(registered["records"][0])
    answer = httpx.post(
        f"{api.url}/predict", content=body, headers={"content-type": "text/plain"}, timeout=10
    )
    assert answer.status_code == 415 and "Content-Type: application/json" in answer.json()["detail"]


def test_slow_bodies_hold_no_slot_and_are_not_counted_as_the_servers_errors(api: Api, registered) -> None:  # noqa: F811
    """More clients than slots trickle their bodies: a good client is still answered, and the slow ones end in
    408s that neither the availability SLO (no 5xx) nor the latency histogram counts. (A server whose every slot
    is scoring still answers 503: ``test_limits_middleware.py``.)"""
    statuses, latencies = api.statuses(), api.latencies()
    slow = MAX_CONCURRENT * 3
    answers: list[tuple[float, bytes]] = []

    def slow_client() -> None:
        with connect(api) as sock:
            sock.sendall(f"{JSON_HEAD}Content-Length: 1000\r\n\r\n{{".encode())
            answers.append(trickle(sock, b" ", BODY_TIMEOUT_S + MARGIN_S + 5))

    clients = [threading.Thread(target=slow_client) for _ in range(slow)]
    for client in clients:
        client.start()
    time.sleep(0.3)  # the server has their headers: before the fix, every slot was theirs from here on
    good: list[int] = []
    for _ in range(10):  # for about 1 s of the slow clients' 2
        good.append(httpx.post(f"{api.url}/predict", json=registered["records"][0], timeout=10).status_code)
        time.sleep(0.1)
    ready = httpx.get(f"{api.url}/ready", timeout=10).status_code
    for client in clients:
        client.join()
    assert good == [200] * len(good), f"{good.count(503)} of {len(good)} good requests refused"
    assert ready == 200
    assert len(answers) == slow
    for took, answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert BODY_TIMEOUT_S - 0.5 < took < BODY_TIMEOUT_S + MARGIN_S
    after = api.statuses()
    assert after.get("408", 0) - statuses.get("408", 0) == slow
    errors = {status: after[status] - statuses.get(status, 0) for status in after if status.startswith("5")}
    assert not any(errors.values()), errors
    assert api.latencies()["count"] - latencies["count"] == len(good)  # the good requests' only


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_slow_upload_is_timed_from_the_end_of_its_body(api: Api, registered, framing: str) -> None:  # noqa: F811
    """A body that takes half the body deadline to arrive, then scores at once, is a fast answer of the server's."""
    body = orjson.dumps(registered["records"][0])
    pieces = [body[i : i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    if framing == "chunked":
        head = f"{JSON_HEAD}Transfer-Encoding: chunked\r\n\r\n".encode()
        pieces = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces] + [b"0\r\n\r\n"]
    else:
        head = f"{JSON_HEAD}Content-Length: {len(body)}\r\n\r\n".encode()
    before = api.latencies()
    pause = BODY_TIMEOUT_S / 2 / (len(pieces) - 1)
    with connect(api) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(pause)
            sock.sendall(piece)
        uploaded = time.monotonic() - started
        with sock.makefile("rb") as answers:
            assert answers.readline().startswith(b"HTTP/1.1 200")
    assert uploaded >= BODY_TIMEOUT_S / 2 - 0.05
    after = api.latencies()
    assert after["count"] - before["count"] == 1
    assert after["0.25"] - before["0.25"] == 1, f"observed {after['sum'] - before['sum']:.3f} s"
