"""The alert notifier against a real HTTP server and a real SMTP server, both on loopback."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mlops.notifiers import AlertDeliveryError, AlertNotifier
from tests.conftest import free_port

TEST_LOGGER = logging.getLogger("tests.notifiers")


@pytest.fixture(autouse=True)
def stdlib_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow's own logger is structlog; a stdlib logger lets caplog see what the task log would get.
    monkeypatch.setattr(AlertNotifier, "log", property(lambda self: TEST_LOGGER))


def set_connection(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], conn_id: str = "mlops_alerts"
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


class Webhook:
    def __init__(self, status: int) -> None:
        self.status = status
        self.location = ""  # sent as Location (with a 3xx status)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []


@pytest.fixture()
def webhook() -> Iterator[tuple[Webhook, int]]:
    state = Webhook(status=200)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers), body))
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            self.end_headers()
            self.wfile.write(b"ok" if state.status == 200 else b"no_service")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture()
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def notifier() -> AlertNotifier:
    return AlertNotifier(title="Terraform drift: 1 stack", message="- `aws_s3_bucket.data`: tags changed")


def test_a_webhook_connection_posts_the_alert_as_slack_json(monkeypatch, webhook) -> None:
    state, port = webhook
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{port}/services/T0/B0/XYZ"})
    notifier().notify({})
    ((path, headers, body),) = state.requests
    assert path == "/services/T0/B0/XYZ"
    assert headers["Content-Type"] == "application/json"
    text = json.loads(body)["text"]
    assert "Terraform drift: 1 stack" in text and "`aws_s3_bucket.data`: tags changed" in text


def test_the_webhook_url_can_be_built_from_host_port_and_schema(monkeypatch, webhook) -> None:
    state, port = webhook
    set_connection(
        monkeypatch,
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": port,
            "schema": "hooks/abc",
            "extra": {"scheme": "http"},
        },
    )
    notifier().notify({})
    assert [path for path, _, _ in state.requests] == ["/hooks/abc"]


def test_a_webhook_that_refuses_the_alert_raises_and_logs_the_alert(monkeypatch, webhook, caplog) -> None:
    state, port = webhook
    state.status = 404
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{port}/gone"})
    with (
        caplog.at_level(logging.ERROR, logger=TEST_LOGGER.name),
        pytest.raises(AlertDeliveryError, match="HTTP 404"),
    ):
        notifier().notify({})
    assert "ALERT NOT DELIVERED" in caplog.text and "tags changed" in caplog.text


def test_an_unreachable_webhook_raises(monkeypatch) -> None:
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{free_port()}/x"})
    with pytest.raises(AlertDeliveryError, match="failed"):
        notifier().notify({})


def test_an_smtp_connection_sends_an_email(monkeypatch, smtp_server) -> None:
    inbox, port = smtp_server
    set_connection(
        monkeypatch,
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"to": "oncall@example.com, infra@example.com", "from": "airflow@example.com"},
        },
    )
    notifier().notify({})
    (envelope,) = inbox.messages
    assert envelope.mail_from == "airflow@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "infra@example.com"]
    content = envelope.content.decode()
    assert "Subject: Terraform drift: 1 stack" in content
    assert "`aws_s3_bucket.data`: tags changed" in content


def test_an_email_connection_without_recipients_is_refused_with_the_reason(monkeypatch, smtp_server) -> None:
    inbox, port = smtp_server
    set_connection(
        monkeypatch, {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"from": "a@b.c"}}
    )
    with pytest.raises(AlertDeliveryError, match="needs a host, extra 'to'"):
        notifier().notify({})
    assert inbox.messages == []


def test_without_a_connection_the_alert_is_logged_at_warning(monkeypatch, caplog) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_ALERTS", raising=False)
    with caplog.at_level(logging.WARNING, logger=TEST_LOGGER.name):
        notifier().notify({})
    (record,) = [r for r in caplog.records if r.name == TEST_LOGGER.name]
    assert record.levelno == logging.WARNING
    assert "Terraform drift: 1 stack" in record.getMessage() and "tags changed" in record.getMessage()


def test_a_connection_of_another_type_is_refused_by_name(monkeypatch) -> None:
    set_connection(monkeypatch, {"conn_type": "postgres", "host": "db"})
    with pytest.raises(AlertDeliveryError, match="type 'postgres'"):
        notifier().notify({})


def test_as_a_callback_the_title_and_message_are_rendered_from_the_context(monkeypatch, webhook) -> None:
    state, port = webhook
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{port}/cb"})
    callback = AlertNotifier(title="{{ dag_id }} failed", message="run {{ run_id }}")
    callback({"dag_id": "terraform_drift_check", "run_id": "scheduled__2026"})
    text = json.loads(state.requests[0][2])["text"]
    assert "terraform_drift_check failed" in text and "run scheduled__2026" in text


def test_one_notifier_sends_each_alert_with_its_own_text(monkeypatch, webhook) -> None:
    """A DAG's callback lives as long as the process: the second failure must not repeat the first's text."""
    state, port = webhook
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{port}/cb"})
    callback = AlertNotifier(title="{{ dag_id }} failed", message="run {{ run_id }}")
    callback({"dag_id": "ml_training_pipeline", "run_id": "manual__1"})
    callback({"dag_id": "terraform_drift_check", "run_id": "scheduled__2"})
    first, second = (json.loads(body)["text"] for _, _, body in state.requests)
    assert "ml_training_pipeline failed" in first and "run manual__1" in first
    assert "terraform_drift_check failed" in second and "run scheduled__2" in second
    assert callback.title == "{{ dag_id }} failed"  # the callback keeps its templates


@pytest.mark.parametrize(
    "conn",
    [
        {"conn_type": "http", "host": "file://{path}"},
        {"conn_type": "slackwebhook", "host": "FILE://{path}"},
        {"conn_type": "http", "host": "localhost", "schema": "{path}", "extra": {"scheme": "file"}},
        {"conn_type": "https", "host": "ftp://127.0.0.1/alerts"},
    ],
    ids=["file-url", "file-url-upper-case", "file-scheme-in-extras", "ftp-url"],
)
def test_a_webhook_url_that_is_not_http_is_refused_with_the_reason(
    monkeypatch, tmp_path, caplog, conn
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the webhook")
    conn = {
        key: value.format(path=secret) if isinstance(value, str) else value for key, value in conn.items()
    }
    set_connection(monkeypatch, conn)
    with (
        caplog.at_level(logging.ERROR, logger=TEST_LOGGER.name),
        pytest.raises(AlertDeliveryError, match=r"must be an http:// or https:// URL"),
    ):
        notifier().notify({})
    assert "ALERT NOT DELIVERED" in caplog.text and "not for the webhook" not in caplog.text


def test_a_webhook_redirect_to_another_scheme_is_not_followed(monkeypatch, webhook) -> None:
    state, port = webhook
    state.status, state.location = 302, "ftp://127.0.0.1/alerts"
    set_connection(monkeypatch, {"conn_type": "http", "host": f"http://127.0.0.1:{port}/moved"})
    with pytest.raises(AlertDeliveryError, match=r"redirect of the webhook \(HTTP 302\) must be an http"):
        notifier().notify({})
    assert [path for path, _, _ in state.requests] == ["/moved"]
