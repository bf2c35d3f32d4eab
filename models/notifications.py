"""Notification routes (where to send) and notifications (what happened)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from models.base import Duration, MedkitModel, Name
from models.phases import Phase, Severity


class WebhookRoute(MedkitModel):
    """A JSON POST to a URL. The URL may be given directly or, when it is a secret, by env var name."""

    kind: Literal["webhook"] = "webhook"
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    url_env: str | None = None
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookRoute:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url or url_env")
        return self


NotificationRoute = Annotated[WebhookRoute, Field(discriminator="kind")]
"""Any notification route a policy can name, selected by its `kind`."""

NotificationEvent = Literal[
    "emergency", "approval_needed", "escalation", "manual_intervention",
    "acknowledged", "recovered", "resolved", "aborted", "action",
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
