"""A fake Kubernetes API on loopback, for the cluster path of the pod operator (no cluster runs here).

It answers the REST calls the provider's pod operator makes (create, list, read, patch and delete a pod, read its
log, list its events) from one scripted pod, so that the provider's own code and the real Kubernetes client run
unchanged above the HTTP boundary. The test sets what the pod looks like (``status``) and its ``events``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?(?P<log>/log)?$")
EVENTS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")


@dataclass
class FakeCluster:
    """What the fake API serves and what it was asked."""

    #: The pod's ``status`` as the API would return it (camelCase, as on the wire).
    status: dict[str, Any]
    #: Events of the pod: ``(type, reason, message)``.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    log: str = ""
    pod: dict[str, Any] | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)

    def deleted(self) -> bool:
        return any(method == "DELETE" for method, _ in self.requests)


def pod_named(name: str, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
    """A pod as the API returns it, for a trigger event that names an existing pod."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {}, "resourceVersion": "1"},
        "spec": {"containers": [{"name": "base", "image": "stage"}]},
        "status": status,
    }


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: the test reads ``cluster.requests``
            pass

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _pod(self) -> dict[str, Any] | None:
            if cluster.pod is None:
                return None
            statuses = [  # with the fields the API always sets
                {"image": "stage", "imageID": "", "ready": False, "restartCount": 0, **status}
                for status in cluster.status.get("containerStatuses", [])
            ]
            return {**cluster.pod, "status": {**cluster.status, "containerStatuses": statuses}}

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            cluster.requests.append((method, self.path))
            if match := EVENTS_PATH.match(path):
                items = [
                    {
                        "metadata": {"name": f"event-{i}", "uid": f"uid-{i}", "resourceVersion": str(i + 2)},
                        "involvedObject": {
                            "kind": "Pod",
                            "name": (cluster.pod or {}).get("metadata", {}).get("name"),
                        },
                        "type": kind,
                        "reason": reason,
                        "message": message,
                    }
                    for i, (kind, reason, message) in enumerate(cluster.events)
                ]
                return self._send(
                    200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}
                )
            match = POD_PATH.match(path)
            if match is None:
                return self._send(404, {"kind": "Status", "code": 404, "message": f"no route {path}"})
            if method == "POST":
                created = self._body()
                created["metadata"].setdefault("resourceVersion", "1")
                cluster.pod = created
                return self._send(201, self._pod())
            pod = self._pod()
            if match["name"] is None:  # a list by label selector
                return self._send(
                    200,
                    {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod] if pod else []},
                )
            if pod is None or pod["metadata"]["name"] != match["name"]:
                return self._send(
                    404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "pod not found"}
                )
            if match["log"]:
                return self._send(200, cluster.log, "text/plain")
            if method == "PATCH":
                labels = self._body().get("metadata", {}).get("labels", {})
                pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **labels}
            return self._send(200, pod)

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@contextmanager
def fake_kubernetes_api(cluster: FakeCluster, folder: Path) -> Iterator[Path]:
    """Serve ``cluster`` on loopback; yields a kubeconfig file that points the Kubernetes client at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    kubeconfig = folder / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    kubeconfig.write_text(json.dumps(config))
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
