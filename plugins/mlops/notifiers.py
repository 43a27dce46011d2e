"""Alerts to people through Airflow's provider notifiers, chosen by the type of the Airflow connection ``mlops_alerts``.

``AlertNotifier`` is an Airflow notifier: use it as ``on_failure_callback=AlertNotifier(title=..., message=...)``
or call ``AlertNotifier(...).notify(context)`` from a task. The connection says where the alert goes:

- type ``slackwebhook``: a Slack incoming webhook, through the Slack provider's ``SlackWebhookNotifier`` (the
  webhook's token as the password, as that provider documents; host ``hooks.slack.com/services``).
- type ``smtp`` (or ``email``): an e-mail, through the SMTP provider's ``SmtpNotifier``: the recipients in the
  extra ``to`` (a list or a comma-separated string), the sender in the provider's extra ``from_email``.
- type ``apprise``: any service Apprise speaks (Mattermost, Rocket.Chat, Microsoft Teams, PagerDuty, ntfy, a
  JSON webhook, ...), through the Apprise provider's ``AppriseNotifier``, from the connection's ``config``.
- no such connection (the embedded default): the alert is logged at WARNING in the task log, so it is never
  dropped silently.

A failure to deliver raises with the reason, after logging the alert itself so its content is not lost.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

if TYPE_CHECKING:
    from airflow.sdk import Connection, Context

DEFAULT_CONN_ID = "mlops_alerts"
SLACK_TYPES = frozenset({"slackwebhook"})
EMAIL_TYPES = frozenset({"smtp", "email"})
APPRISE_TYPES = frozenset({"apprise"})
#: Seconds to wait for the webhook; an alert must not hold a worker slot for long.
DELIVERY_TIMEOUT = 30


class AlertDeliveryError(AirflowException):
    """The alert could not be delivered through the configured connection."""


def _recipients(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence):
        return [str(part).strip() for part in value if str(part).strip()]
    return []


class AlertNotifier(BaseNotifier):
    """Send an alert through the connection ``conn_id``, or log it at WARNING when there is none.

    :param title: First line of the alert (templated).
    :param message: Body of the alert, markdown (templated).
    :param conn_id: Airflow connection that says where alerts go.
    """

    template_fields = ("title", "message")

    def __init__(self, *, title: str, message: str, conn_id: str = DEFAULT_CONN_ID) -> None:
        super().__init__()
        self.title = title
        self.message = message
        self.conn_id = conn_id

    def __call__(self, *args: Any) -> None:
        # BaseNotifier renders the template fields in place, which cannot be undone: a notifier that lives on
        # (a DAG's callback, called once per failure) would send its first alert's text every time after.
        # Each alert renders a fresh copy of the templates instead.
        fresh = copy.copy(self)
        BaseNotifier.__call__(fresh, *args)

    def notify(self, context: Context) -> None:
        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            self.log.warning(
                "ALERT (no connection %r configured, so it is only logged): %s\n%s",
                self.conn_id,
                self.title,
                self.message,
            )
            return
        conn_type = (conn.conn_type or "").lower()
        try:
            self._provider_notifier(conn, conn_type).notify(context)
        except Exception as err:
            self.log.error("ALERT NOT DELIVERED (%s): %s\n%s", err, self.title, self.message)
            if isinstance(err, AlertDeliveryError):
                raise
            raise AlertDeliveryError(f"alert through connection {self.conn_id!r} failed: {err}") from err
        self.log.info("alert sent through connection %r (%s): %s", self.conn_id, conn_type, self.title)

    def _provider_notifier(self, conn: Connection, conn_type: str) -> BaseNotifier:
        """The provider's notifier for the connection's type, with this alert's (rendered) text."""
        if conn_type in SLACK_TYPES:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            return SlackWebhookNotifier(
                slack_webhook_conn_id=self.conn_id,
                text=f"*{self.title}*\n{self.message}",
                timeout=DELIVERY_TIMEOUT,
            )
        if conn_type in EMAIL_TYPES:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            recipients = _recipients(conn.extra_dejson.get("to"))
            if not recipients:
                raise AlertDeliveryError(
                    f"e-mail connection {self.conn_id!r} needs the extra 'to' (the recipients)"
                )
            return SmtpNotifier(
                to=recipients,
                subject=self.title,
                # The message is Markdown-ish text: kept as it is written, never read as HTML.
                html_content=f"<pre>{html.escape(self.message)}</pre>",
                smtp_conn_id=self.conn_id,
            )
        if conn_type in APPRISE_TYPES:
            from airflow.providers.apprise.notifications.apprise import AppriseNotifier

            return AppriseNotifier(body=self.message, title=self.title, apprise_conn_id=self.conn_id)
        supported = sorted(SLACK_TYPES | EMAIL_TYPES | APPRISE_TYPES)
        raise AlertDeliveryError(
            f"connection {self.conn_id!r} has type {conn.conn_type!r}; alerts go through the providers' notifiers "
            f"of the types {supported} (a Mattermost, Rocket.Chat or plain JSON webhook is an apprise URL)"
        )


def alerts(model: Any, *, title: str, message: str) -> AlertNotifier:
    """A notifier of a model's alerts (``mlops.models.Model``): through its file's connection, else the platform's."""
    named = {"conn_id": model.release.alert_connection} if model.release.alert_connection else {}
    return AlertNotifier(title=title, message=message, **named)
