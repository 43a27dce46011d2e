"""Abusive clients against a running inference API: oversized chunked uploads and trickling sockets.

Each measures what the issue "Faults and exposure" found: the server's memory under three parallel 300 MB
chunked uploads (before the limits: 1.5 GiB RSS), and how many of 70 trickling sockets are still open after the
server's deadlines (before: all 70 after 60 s).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

HEAD = "POST /predict HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn's workers), in bytes."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def read_until_closed(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """What the server sends until it closes the connection (a reset, or a server that never closes, ends it)."""
    sock.setblocking(True)
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:  # a reset, or a server that never closed
        pass
    return received


def upload_chunked(port: int, total: int, chunk: int = 256 * 1024) -> dict[str, Any]:
    """Stream ``total`` bytes as one chunked /predict body, as fast as the server reads them; stop when it
    answers or closes. Returns the bytes sent, the answer and its status line."""
    frame = memoryview(f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n")
    sent = offset = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.setblocking(False)
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable or not writable:
                break
            try:
                written = sock.send(frame[offset:])
            except OSError:
                break
            offset, sent = (offset + written) % len(frame), sent + written
        if sent >= total:
            sock.setblocking(True)
            sock.sendall(b"0\r\n\r\n")
        answer = read_until_closed(sock, timeout_s=60)
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer"
    return {"sent": sent, "answer": answer, "status": status}


def parallel_uploads(port: int, server_pid: int, uploads: int = 3, size: int = 300_000_000) -> dict[str, Any]:
    """``uploads`` parallel chunked uploads of ``size`` bytes; the server's RSS before and at its peak."""
    baseline = tree_rss(server_pid)
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(server_pid))
            time.sleep(0.01)

    results: list[dict[str, Any]] = [{} for _ in range(uploads)]

    def upload(index: int) -> None:
        results[index] = upload_chunked(port, size)

    sampler = threading.Thread(target=sample)
    clients = [threading.Thread(target=upload, args=(i,)) for i in range(uploads)]
    started = time.monotonic()
    sampler.start()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    seconds = time.monotonic() - started
    time.sleep(0.5)  # what the server frees after answering does not count; what it kept would show here
    done.set()
    sampler.join()
    return {
        "uploads": uploads,
        "size_mb": size / 1e6,
        "seconds": seconds,
        "rss_before_mb": baseline / 1e6,
        "rss_peak_mb": peak[0] / 1e6,
        "rss_growth_mb": (peak[0] - baseline) / 1e6,
        "sent_mb": [r["sent"] / 1e6 for r in results],
        "answers": [r["status"] for r in results],
    }


def _trickle(port: int, part: str, wait_s: float, closed_at: list[float | None], index: int) -> None:
    """One client sending its request a byte a second (its headers, or its body); records when the server
    closed the connection (None if it is still open after ``wait_s``)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if part == "headers":
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: api\r\nX-Slow: ")
        else:
            sock.sendall(f"{HEAD}Content-Length: 1000000\r\n\r\n{{".encode())
        while time.monotonic() - started < wait_s:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                read_until_closed(sock, timeout_s=5)
                closed_at[index] = time.monotonic() - started
                return
            try:
                sock.send(b"a" if part == "headers" else b" ")
            except OSError:
                closed_at[index] = time.monotonic() - started
                return


def trickling_clients(port: int, server_pid: int, clients: int = 70, wait_s: float = 60) -> dict[str, Any]:
    """``clients`` trickling clients, half of them slow in their headers, half in their body; how many the
    server still holds open after ``wait_s``."""
    import psutil

    closed_at: list[float | None] = [None] * clients
    parts = ["headers" if i % 2 == 0 else "body" for i in range(clients)]
    threads = [
        threading.Thread(target=_trickle, args=(port, parts[i], wait_s, closed_at, i)) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(wait_s - 1)
    # The server's view too, just before the clients give up: its connections on its port still established.
    held = sum(
        1
        for process in [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]
        for connection in process.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
    )
    for thread in threads:
        thread.join()
    closed = [t for t in closed_at if t is not None]
    by_part = {
        part: [t for t, p in zip(closed_at, parts, strict=True) if p == part and t is not None]
        for part in ("headers", "body")
    }
    return {
        "clients": clients,
        "wait_s": wait_s,
        "open_after_wait": clients - len(closed),
        "server_connections_after_wait": held,
        "closed_after_s": {
            part: [min(times), max(times)] if times else None for part, times in by_part.items()
        },
    }
