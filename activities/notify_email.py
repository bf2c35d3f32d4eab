"""Email delivery over SMTP (stdlib smtplib, in a thread), with optional STARTTLS and login.

The Message-ID is derived from the notification id, so a message re-sent after a lost SMTP
reply carries the same id and mail systems can drop the copy; References names the incident
so mail clients thread one recovery run together.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import socket
import ssl
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

from temporalio.exceptions import ApplicationError

from activities.notify_delivery import clip, resolve_secret
from models.notifications import EmailRoute, Notification, NotifyRequest, NotifyResult

SUBJECT_LIMIT = 200

_POLICY = policy.default.clone(max_line_length=998)
"""RFC 5322's hard line limit, so long tokens (dedup keys) stay on one line instead of folding."""


def _message_id(name: str, domain: str) -> str:
    return f"<{hashlib.sha256(name.encode()).hexdigest()[:32]}@{domain}>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def email_message(notification: Notification, route: EmailRoute) -> EmailMessage:
    """The message: subject from the title, a plain-text body with the facts, evidence and command."""
    domain = route.sender.rsplit("@", 1)[1]
    dry = "[dry-run] " if notification.dry_run else ""
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = clip(f"[medkit] {dry}{_one_line(notification.title)}", SUBJECT_LIMIT)
    message["From"] = route.sender
    message["To"] = ", ".join(route.to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = _message_id(notification.notification_id, domain)
    message["References"] = _message_id(notification.dedup_key, domain)
    message["X-Medkit-Dedup-Key"] = _one_line(notification.dedup_key)
    message["X-Medkit-Event"] = notification.event
    severity = notification.severity.value if notification.severity else "unknown"
    lines = [
        notification.text, "",
        f"Service:  {notification.service}",
        f"Severity: {severity}",
        f"Phase:    {notification.phase.value}",
        f"Event:    {notification.event}",
        f"Workflow: {notification.workflow_id}",
    ]
    if notification.command:
        lines += ["", "Decide with:", f"    {notification.command}"]
    if notification.evidence:
        lines += ["", "Evidence:", *(f"  - {line}" for line in notification.evidence)]
    message.set_content("\n".join(lines) + "\n")
    return message


def _rejected(route_name: str, what: str) -> ApplicationError:
    return ApplicationError(f"route {route_name!r}: {what}", type="DeliveryRejected", non_retryable=True)


def _retryable(route_name: str, what: str) -> ApplicationError:
    return ApplicationError(f"route {route_name!r}: {what}", type="DeliveryRetryable")


def _by_code(route_name: str, code: int, what: str) -> ApplicationError:
    """SMTP 5xx is permanent (retrying cannot help); 4xx is transient."""
    if code >= 500:
        return _rejected(route_name, f"{what} (SMTP {code})")
    return _retryable(route_name, f"{what} (SMTP {code})")


def _send_blocking(route: EmailRoute, message: EmailMessage, credentials: tuple[str, str] | None,
                   tls: ssl.SSLContext | None) -> dict[str, tuple[int, bytes]]:
    """Connect, optionally upgrade (with `tls`) and log in, send; the refused recipients, if some were."""
    with smtplib.SMTP(route.host, route.port, local_hostname=socket.gethostname(),
                      timeout=route.timeout.total_seconds()) as smtp:
        smtp.ehlo()
        if tls is not None:
            smtp.starttls(context=tls)
            smtp.ehlo()
        if credentials is not None:
            smtp.login(*credentials)
        return smtp.send_message(message)


def _classify(route_name: str, err: Exception) -> ApplicationError:
    """Map an smtplib/socket failure to a retryable or permanent error, without echoing secrets."""
    if isinstance(err, smtplib.SMTPNotSupportedError):
        return _rejected(route_name, "the server does not offer STARTTLS")
    if isinstance(err, smtplib.SMTPAuthenticationError):
        return _rejected(route_name, f"login refused (SMTP {err.smtp_code})")
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in err.recipients.values()]
        return _by_code(route_name, min(codes, default=550), "every recipient refused")
    if isinstance(err, smtplib.SMTPResponseException):
        return _by_code(route_name, err.smtp_code, type(err).__name__)
    if isinstance(err, ssl.SSLCertVerificationError):
        return _rejected(route_name, f"TLS certificate not trusted: {err.verify_message}")
    return _retryable(route_name, f"SMTP delivery failed: {type(err).__name__}")


async def send_email(request: NotifyRequest, route: EmailRoute) -> NotifyResult:
    """Send one email to every recipient; a recipient refused while others accepted is reported."""
    credentials = None
    if route.username_env is not None and route.password_env is not None:
        what = f"route {request.route_name!r} SMTP"
        credentials = (resolve_secret(route.username_env, f"{what} username"),
                       resolve_secret(route.password_env, f"{what} password"))
    message = email_message(request.notification, route)
    tls = None
    if route.starttls:
        # Before connecting: an unreadable ca_file is the worker's configuration, which no retry
        # changes; raised mid-conversation it looked like a network error and was retried.
        try:
            tls = ssl.create_default_context(cafile=route.ca_file)
        except OSError as err:  # FileNotFoundError, PermissionError, ssl.SSLError (not PEM)
            raise _rejected(request.route_name, f"cannot load ca_file {route.ca_file}: "
                            f"{err.strerror or type(err).__name__}") from None
    try:
        refused = await asyncio.to_thread(_send_blocking, route, message, credentials, tls)
    except (smtplib.SMTPException, OSError) as err:
        raise _classify(request.route_name, err) from None
    detail = f"refused: {', '.join(sorted(refused))}" if refused else ""
    return NotifyResult(route_name=request.route_name, delivered=True, detail=detail)
