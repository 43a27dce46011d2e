"""The alert notifier through Airflow's provider notifiers (Slack's SDK, the SMTP provider, Apprise), against a
real HTTP server and a real SMTP server, both on loopback."""

from __future__ import annotations

import email
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
    return AlertNotifier(title="Terraform drift: 1 stack", message="- `aws_s3_bucket.data`: tags <changed>")


def slack(port: int, path: str = "services") -> dict[str, Any]:
    """A Slack webhook connection as the Slack provider documents it, pointed at the loopback server."""
    return {"conn_type": "slackwebhook", "host": f"127.0.0.1:{port}/{path}", "schema": "http",
            "password": "T000/B000/XXXX"}  # fmt: skip


def test_a_slack_webhook_connection_posts_the_alert_through_the_slack_provider(monkeypatch, webhook) -> None:
    state, port = webhook
    set_connection(monkeypatch, slack(port))
    notifier().notify({})
    ((path, headers, body),) = state.requests
    assert path == "/services/T000/B000/XXXX"  # the provider's URL: host, then the token
    assert headers["Content-Type"].startswith("application/json")
    text = json.loads(body)["text"]
    assert text == "*Terraform drift: 1 stack*\n- `aws_s3_bucket.data`: tags <changed>"


def test_a_webhook_that_refuses_the_alert_raises_and_logs_the_alert(monkeypatch, webhook, caplog) -> None:
    state, port = webhook
    state.status = 404
    set_connection(monkeypatch, slack(port))
    with (
        caplog.at_level(logging.ERROR, logger=TEST_LOGGER.name),
        pytest.raises(AlertDeliveryError, match="failed"),
    ):
        notifier().notify({})
    assert "ALERT NOT DELIVERED" in caplog.text and "tags <changed>" in caplog.text


def test_an_unreachable_webhook_raises(monkeypatch) -> None:
    set_connection(monkeypatch, slack(free_port()))
    with pytest.raises(AlertDeliveryError, match="failed"):
        notifier().notify({})


def test_an_smtp_connection_sends_an_email_through_the_smtp_provider(monkeypatch, smtp_server) -> None:
    inbox, port = smtp_server
    set_connection(
        monkeypatch,
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"to": "oncall@example.com, infra@example.com", "from_email": "airflow@example.com",
                      "disable_ssl": True, "disable_tls": True},
        },
    )  # fmt: skip
    notifier().notify({})
    (envelope,) = inbox.messages
    assert envelope.mail_from == "airflow@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "infra@example.com"]
    mail = email.message_from_bytes(envelope.content)
    assert mail["Subject"] == "Terraform drift: 1 stack"
    (part,) = [p for p in mail.walk() if p.get_content_type() == "text/html"]
    # The text as written, escaped: never read as HTML.
    assert part.get_payload(decode=True).decode() == "<pre>- `aws_s3_bucket.data`: tags &lt;changed&gt;</pre>"


def test_an_email_connection_without_recipients_is_refused_with_the_reason(monkeypatch, smtp_server) -> None:
    inbox, port = smtp_server
    set_connection(
        monkeypatch,
        {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {"from_email": "a@b.c"}},
    )
    with pytest.raises(AlertDeliveryError, match="needs the extra 'to'"):
        notifier().notify({})
    assert inbox.messages == []


def test_an_apprise_connection_sends_through_apprise(monkeypatch, webhook) -> None:
    """Apprise's plain JSON webhook (json://), one of the services it speaks, posted to the loopback server."""
    state, port = webhook
    config = {"path": f"json://127.0.0.1:{port}/alerts", "tag": "alerts"}
    set_connection(monkeypatch, {"conn_type": "apprise", "extra": {"config": config}})
    AlertNotifier(title="Release refused", message="the error budget is spent").notify({})
    ((path, _, body),) = state.requests
    sent = json.loads(body)
    assert path == "/alerts" and (sent["title"], sent["message"]) == (
        "Release refused",
        "the error budget is spent",
    )


def test_without_a_connection_the_alert_is_logged_at_warning(monkeypatch, caplog) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_ALERTS", raising=False)
    with caplog.at_level(logging.WARNING, logger=TEST_LOGGER.name):
        notifier().notify({})
    (record,) = [r for r in caplog.records if r.name == TEST_LOGGER.name]
    assert record.levelno == logging.WARNING
    assert "Terraform drift: 1 stack" in record.getMessage() and "tags <changed>" in record.getMessage()


@pytest.mark.parametrize("conn_type", ["postgres", "http"])
def test_a_connection_of_another_type_is_refused_by_name(monkeypatch, conn_type) -> None:
    """A plain http connection included: the alert transports are the providers' notifiers."""
    set_connection(monkeypatch, {"conn_type": conn_type, "host": "db"})
    with pytest.raises(AlertDeliveryError, match=f"type '{conn_type}'.*apprise URL"):
        notifier().notify({})


def test_as_a_callback_the_title_and_message_are_rendered_from_the_context(monkeypatch, webhook) -> None:
    state, port = webhook
    set_connection(monkeypatch, slack(port))
    callback = AlertNotifier(title="{{ dag_id }} failed", message="run {{ run_id }}")
    callback({"dag_id": "terraform_drift_check", "run_id": "scheduled__2026"})
    text = json.loads(state.requests[0][2])["text"]
    assert "terraform_drift_check failed" in text and "run scheduled__2026" in text


def test_one_notifier_sends_each_alert_with_its_own_text(monkeypatch, webhook) -> None:
    """A DAG's callback lives as long as the process: the second failure must not repeat the first's text."""
    state, port = webhook
    set_connection(monkeypatch, slack(port))
    callback = AlertNotifier(title="{{ dag_id }} failed", message="run {{ run_id }}")
    callback({"dag_id": "ml_training_pipeline", "run_id": "manual__1"})
    callback({"dag_id": "terraform_drift_check", "run_id": "scheduled__2"})
    first, second = (json.loads(body)["text"] for _, _, body in state.requests)
    assert "ml_training_pipeline failed" in first and "run manual__1" in first
    assert "terraform_drift_check failed" in second and "run scheduled__2" in second
    assert callback.title == "{{ dag_id }} failed"  # the callback keeps its templates
