"""Alerts to people: a Slack-style webhook or an e-mail, chosen by the Airflow connection ``mlops_alerts``.

``AlertNotifier`` is an Airflow notifier: use it as ``on_failure_callback=AlertNotifier(title=..., message=...)``
or call ``AlertNotifier(...).notify(context)`` from a task. What happens depends on the connection:

- type ``http``/``https`` (or ``slackwebhook``): POST ``{"text": "<title>\\n<message>"}`` as JSON to the URL
  of the connection (a host with ``://`` is used as the whole URL; otherwise scheme, host, port and schema
  as a path). This is the format of Slack incoming webhooks, also accepted by Mattermost and Rocket.Chat.
  Only ``http`` and ``https`` URLs are posted to, redirects included: a ``file://`` or ``ftp://`` URL in a
  connection is refused with the reason, never opened.
- type ``smtp`` or ``email``: an e-mail through that server; ``to`` (a list or a comma-separated string) and
  ``from`` in the extras, ``ssl`` or ``starttls`` in the extras for encrypted connections.
- no such connection (the embedded default): the alert is logged at WARNING in the task log, so it is
  never dropped silently.

A failure to deliver raises with the reason, after logging the alert itself so its content is not lost.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

if TYPE_CHECKING:
    from airflow.sdk import Connection, Context

DEFAULT_CONN_ID = "mlops_alerts"
WEBHOOK_TYPES = frozenset({"http", "https", "slackwebhook"})
#: The only URL schemes an alert is posted to (urllib would also open file:// and ftp:// URLs).
WEBHOOK_SCHEMES = frozenset({"http", "https"})
EMAIL_TYPES = frozenset({"smtp", "email"})
#: Seconds to wait for the webhook or the mail server; an alert must not hold a worker slot for long.
DELIVERY_TIMEOUT = 30


class AlertDeliveryError(AirflowException):
    """The alert could not be delivered through the configured connection."""


def webhook_url(conn: Connection) -> str:
    """The URL a webhook connection posts to; an http(s) URL, or AlertDeliveryError says why not."""
    host = (conn.host or "").strip()
    if not host:
        raise AlertDeliveryError(
            f"connection {conn.conn_id!r} ({conn.conn_type}) has no host: no URL to post to"
        )
    if "://" in host:
        url = host
    else:
        scheme = str(conn.extra_dejson.get("scheme", "https"))
        url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        if conn.schema:
            url += "/" + conn.schema.lstrip("/")
    _check_web_url(url, f"webhook URL of connection {conn.conn_id!r}")
    return url


def _check_web_url(url: str, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in WEBHOOK_SCHEMES or not parts.hostname:
        # The URL itself is left out of the message: a webhook URL carries its secret token.
        raise AlertDeliveryError(
            f"{what} must be an http:// or https:// URL with a host, not scheme {parts.scheme!r}"
        )


class _WebRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a webhook's redirect only to another http(s) URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_web_url(newurl, f"redirect of the webhook (HTTP {code})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


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
            if conn_type in WEBHOOK_TYPES:
                self._post(conn)
            elif conn_type in EMAIL_TYPES:
                self._send_email(conn)
            else:
                supported = sorted(WEBHOOK_TYPES | EMAIL_TYPES)
                raise AlertDeliveryError(
                    f"connection {self.conn_id!r} has type {conn.conn_type!r}; alerts support {supported}"
                )
        except (AlertDeliveryError, OSError) as err:  # smtplib's errors are OSErrors
            self.log.error("ALERT NOT DELIVERED (%s): %s\n%s", err, self.title, self.message)
            if isinstance(err, AlertDeliveryError):
                raise
            raise AlertDeliveryError(f"alert through connection {self.conn_id!r} failed: {err}") from err
        self.log.info("alert sent through connection %r (%s): %s", self.conn_id, conn_type, self.title)

    def _post(self, conn: Connection) -> None:
        url = webhook_url(conn)
        body = json.dumps({"text": f"*{self.title}*\n{self.message}"}).encode()
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        opener = urllib.request.build_opener(_WebRedirectsOnly)
        try:
            with opener.open(request, timeout=DELIVERY_TIMEOUT) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            raise AlertDeliveryError(
                f"webhook of connection {self.conn_id!r} answered HTTP {err.code}: {err.read()[:200]!r}"
            ) from err
        if not 200 <= status < 300:
            raise AlertDeliveryError(f"webhook of connection {self.conn_id!r} answered HTTP {status}")

    def _send_email(self, conn: Connection) -> None:
        extra = conn.extra_dejson
        recipients = _recipients(extra.get("to"))
        sender = str(extra.get("from") or conn.login or "")
        if not conn.host or not recipients or not sender:
            raise AlertDeliveryError(
                f"e-mail connection {self.conn_id!r} needs a host, extra 'to' and extra 'from' (or a login)"
            )
        import smtplib  # only where e-mail is sent: it is not needed to parse a DAG
        from email.message import EmailMessage

        mail = EmailMessage()
        mail["Subject"] = self.title
        mail["From"] = sender
        mail["To"] = ", ".join(recipients)
        mail.set_content(self.message)
        use_ssl = bool(extra.get("ssl", False))
        smtp_class = smtplib.SMTP_SSL if use_ssl else smtplib.SMTP
        port = conn.port or (465 if use_ssl else 25)
        with smtp_class(conn.host, port, timeout=DELIVERY_TIMEOUT) as smtp:
            if extra.get("starttls") and not use_ssl:
                smtp.starttls()
            if conn.login and conn.password:
                smtp.login(conn.login, conn.password)
            smtp.send_message(mail)
