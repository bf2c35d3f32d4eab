"""Notification routes (where to send) and notifications (what happened)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from models.base import Duration, EnvName, MedkitModel, Name, positive
from models.phases import Phase, Severity
from models.urls import PolicyUrl

EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")]
"""A bare mailbox address, `local@domain`."""

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def _positive_timeout(value: timedelta) -> timedelta:
    return positive(value, "timeout")


DeliveryTimeout = Annotated[Duration, AfterValidator(_positive_timeout)]
"""How long one delivery attempt to a route may take: a duration greater than zero."""


class WebhookRoute(MedkitModel):
    """A JSON POST to a URL. The URL may be given directly or, when it is a secret, by env var name.

    With `hmac_secret_env` set, every request is signed so the receiver can prove it came
    from medkit and is fresh. The worker sends two headers:

    - `X-Medkit-Timestamp`: the Unix time of the attempt, in whole seconds;
    - `X-Medkit-Signature`: `sha256=` + lowercase hex of HMAC-SHA256 keyed with the secret
      (its UTF-8 bytes) over `<timestamp>` + `.` + the raw request body, byte for byte.

    A receiver recomputes the HMAC over the body exactly as received, compares it in constant
    time, and rejects timestamps more than five minutes from its own clock (replays). The
    `Idempotency-Key` header (the notification id) is the same on every attempt; use it to
    drop a message delivered twice.
    """

    kind: Literal["webhook"] = "webhook"
    url: PolicyUrl | None = None
    url_env: EnvName | None = None
    hmac_secret_env: EnvName | None = None
    timeout: DeliveryTimeout = timedelta(seconds=5)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookRoute:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url or url_env")
        return self


class SlackRoute(MedkitModel):
    """A Slack incoming webhook: Block Kit blocks plus a plain `text` fallback.

    The webhook URL is itself the credential, so the policy only names the env var holding it.
    """

    kind: Literal["slack"] = "slack"
    webhook_url_env: EnvName
    timeout: DeliveryTimeout = timedelta(seconds=5)


class PagerDutyRoute(MedkitModel):
    """PagerDuty Events API v2: one alert per recovery run, keyed by the notification's dedup_key.

    `source` becomes `payload.source` (default: the service name); `events_url` exists so a
    test or an egress proxy can stand in for PagerDuty.
    """

    kind: Literal["pagerduty"] = "pagerduty"
    routing_key_env: EnvName
    events_url: PolicyUrl = PAGERDUTY_EVENTS_URL
    source: str | None = None
    timeout: DeliveryTimeout = timedelta(seconds=10)


class EmailRoute(MedkitModel):
    """Email through an SMTP relay, optionally upgraded with STARTTLS and authenticated.

    Credentials are env var names and require `starttls: true`, so a password never crosses
    the network in clear. `ca_file` adds a CA to trust (a private relay's certificate).
    """

    kind: Literal["email"] = "email"
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: bool = False
    ca_file: str | None = None
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    sender: EmailAddress = Field(alias="from")
    to: Annotated[list[EmailAddress], Field(min_length=1)]
    timeout: DeliveryTimeout = timedelta(seconds=10)

    @model_validator(mode="after")
    def _credentials(self) -> EmailRoute:
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("set both username_env and password_env, or neither")
        if self.username_env is not None and not self.starttls:
            raise ValueError("username_env/password_env require starttls: true "
                             "(medkit never sends a password in clear)")
        if self.ca_file is not None and not self.starttls:
            raise ValueError("ca_file only applies with starttls: true")
        return self


NotificationRoute = Annotated[
    WebhookRoute | SlackRoute | PagerDutyRoute | EmailRoute, Field(discriminator="kind")
]
"""Any notification route a policy can name, selected by its `kind`."""

NotificationEvent = Literal[
    "emergency", "approval_needed", "escalation", "manual_intervention",
    "acknowledged", "recovered", "resolved", "aborted", "dismissed", "action",
]


class Notification(MedkitModel):
    """What medkit tells people: the incident, what happened and the evidence.

    `dedup_key` names the incident (one PagerDuty incident per recovery run);
    `notification_id` names this one message (an Idempotency-Key for receivers).
    """

    workflow_id: str
    service: Name
    event: NotificationEvent
    phase: Phase
    severity: Severity | None = None
    title: str
    text: str
    evidence: list[str] = Field(default_factory=list)
    command: str | None = None
    """The operator command that answers the pending decision, when one is pending."""
    dedup_key: str
    notification_id: str
    dry_run: bool = False


class NotifyRequest(MedkitModel):
    """The single argument of the notification activity: one route, one notification."""

    route_name: Name
    route: NotificationRoute
    notification: Notification


class NotifyResult(MedkitModel):
    """Whether the notification was delivered (or already had been)."""

    route_name: str
    delivered: bool
    status_code: int | None = None
    duplicate: bool = False
    simulated: bool = False
    detail: str = ""
