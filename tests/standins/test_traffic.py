"""The local canary's replayed traffic: its clients' connections."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standins.rollouts.server import free_port
from standins.rollouts.traffic import Connection


class Api(BaseHTTPRequestHandler):
    """Answers every POST 200 over a kept-alive connection, and notes each path and body."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        self.seen.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_a_replay_connection_is_kept_alive_and_opened_again_after_a_failed_request() -> None:
    port = free_port()
    connection = Connection(f"http://127.0.0.1:{port}")
    assert connection.predict(b'{"a": 1}') is False  # nothing listens yet: not answered, and no exception
    server = ThreadingHTTPServer(("127.0.0.1", port), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert connection.predict(b'{"a": 2}') and connection.predict(b'{"a": 3}')
        assert Api.seen == [("/predict", b'{"a": 2}'), ("/predict", b'{"a": 3}')]
        assert connection.http is not None and connection.http.sock is not None  # one connection, kept
    finally:
        connection.close()
        server.shutdown()
        server.server_close()
