"""The ``Limits`` middleware alone, driven through ASGI: the states no real client can hold a server in at will
(every slot busy scoring, the budget of bodies arriving spent). The real server's limits: ``test_limits.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ml.serve.limits import Limits
from ml.serve.settings import Settings


class Scoring:
    """An app that reads the whole body, then scores until ``done`` is set; it records the bodies it got."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.scoring = 0
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.bodies.append(await receive())
        if scope["path"] == "/predict":
            self.scoring += 1
            await self.done.wait()
            self.scoring -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class Client:
    """One request on its connection: its body goes out chunk by chunk as the test sends it."""

    def __init__(self, limits: Limits, path: str = "/predict", length: int | None = None) -> None:
        self.chunks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        if path == "/predict":
            framing = (
                (b"content-length", str(length).encode()) if length else (b"transfer-encoding", b"chunked")
            )
            method, headers = "POST", [(b"content-type", b"application/json"), framing]
        else:  # a probe: no body
            method, headers = "GET", []
            self.send(b"", more=False)
        self.scope = {"type": "http", "method": method, "path": path, "headers": headers}
        self.task = asyncio.create_task(limits(self.scope, self.chunks.get, self.receive_answer))

    async def receive_answer(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def send(self, chunk: bytes, more: bool = True) -> None:
        self.chunks.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    async def answer(self) -> tuple[int, dict[bytes, bytes], Any]:
        await asyncio.wait_for(self.task, timeout=5)
        start, body = self.sent
        return start["status"], dict(start["headers"]), orjson.loads(body["body"])


async def until(condition: Any) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


def limits(app: Any, **settings: Any) -> Limits:
    return Limits(app, Settings(model_uri="models:/unused@champion", **settings))


def test_a_server_whose_every_slot_is_scoring_answers_503_with_retry_after_but_the_probes_answer() -> None:
    async def scenario() -> None:
        app = Scoring()
        server = limits(app, max_concurrent_requests=2)
        scoring = [Client(server, length=2) for _ in range(2)]
        for client in scoring:
            client.send(b"{}", more=False)
        await until(lambda: app.scoring == 2)
        refused = Client(server, length=2)
        refused.send(b"{}", more=False)
        status, headers, body = await refused.answer()
        assert status == 503 and headers[b"retry-after"] == b"1" and "at its limit of 2" in body["detail"]
        assert (await Client(server, path="/ready").answer())[0] == 200
        app.done.set()
        assert [(await client.answer())[0] for client in scoring] == [200, 200]
        late = Client(server, length=2)
        late.send(b"{}", more=False)
        assert (await late.answer())[0] == 200

    asyncio.run(scenario())


def test_a_body_still_arriving_holds_no_slot() -> None:
    async def scenario() -> None:
        app = Scoring()
        app.done.set()
        server = limits(app, max_concurrent_requests=1)
        slow = Client(server, length=4)
        slow.send(b"{")
        await until(lambda: server.arriving == 1)
        fast = Client(server, length=2)
        fast.send(b"{}", more=False)
        assert (await fast.answer())[0] == 200
        slow.send(b"}  ", more=False)
        assert (await slow.answer())[0] == 200

    asyncio.run(scenario())


def test_the_app_gets_the_whole_body_in_one_message_and_a_body_in_one_piece_is_not_copied() -> None:
    async def scenario() -> None:
        app = Scoring()
        app.done.set()
        server = limits(app)
        chunked = Client(server)
        for chunk in (b'{"a"', b": 1", b"}"):
            chunked.send(chunk)
        chunked.send(b"", more=False)
        assert (await chunked.answer())[0] == 200
        whole = b'{"a": 1}' * 1000
        at_once = Client(server, length=len(whole))
        at_once.send(whole, more=False)
        assert (await at_once.answer())[0] == 200
        assert app.bodies[0] == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
        assert app.bodies[1]["body"] is whole and not app.bodies[1]["more_body"]
        assert server.arriving == 0

    asyncio.run(scenario())


def test_bodies_arriving_beyond_their_budget_get_429_and_a_body_in_one_piece_still_passes() -> None:
    """The budget is max_concurrent_requests * max_body_bytes (here 2 * 100 bytes) of bodies still arriving."""

    async def scenario() -> None:
        app = Scoring()
        app.done.set()
        server = limits(app, max_concurrent_requests=2, max_body_bytes=100)
        holders = [Client(server, length=100) for _ in range(2)]
        for holder in holders:
            holder.send(b" " * 90)
        await until(lambda: server.arriving == 180)
        crowded = Client(server, length=100)
        crowded.send(b" " * 30)
        status, headers, body = await crowded.answer()
        assert status == 429 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
        assert "already receiving 180 bytes of other bodies (its limit is 200)" in body["detail"]
        whole = Client(server, length=2)
        whole.send(b"{}", more=False)
        assert (await whole.answer())[0] == 200
        for holder in holders:
            holder.send(b"{}" + b" " * 8, more=False)
            assert (await holder.answer())[0] == 200
        assert server.arriving == 0 and server.in_flight == 0

    asyncio.run(scenario())


def test_a_body_refused_midway_frees_its_share_of_the_budget() -> None:
    async def scenario() -> None:
        app = Scoring()
        server = limits(app, max_body_bytes=100, body_timeout_s=0.2)
        over = Client(server)
        over.send(b" " * 60)
        over.send(b" " * 60)
        assert (await over.answer())[0] == 413
        late = Client(server, length=100)
        late.send(b" " * 10)
        status, _, body = await late.answer()
        assert status == 408 and "did not arrive within 0.2 s (10 bytes came)" in body["detail"]
        assert server.arriving == 0 and server.in_flight == 0 and not app.bodies

    asyncio.run(scenario())
