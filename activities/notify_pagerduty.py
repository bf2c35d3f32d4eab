"""PagerDuty Events API v2 delivery: one alert per recovery run, triggered, acknowledged, resolved.

Every event of a run carries the run's dedup_key, so repeats (escalations, retries) append
to the open alert instead of opening new ones, and the end of the run closes it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import httpx

from activities.notify_delivery import clip, post, resolve_secret
from models.notifications import Notification, NotificationEvent, NotifyRequest, NotifyResult, PagerDutyRoute
from models.phases import Severity

EventAction = Literal["trigger", "acknowledge", "resolve"]

EVENT_ACTION: dict[NotificationEvent, EventAction] = {
    "emergency": "trigger",
    "approval_needed": "trigger",
    "escalation": "trigger",
    "manual_intervention": "trigger",
    "action": "trigger",
    "acknowledged": "acknowledge",
    "aborted": "acknowledge",
    "recovered": "resolve",
    "resolved": "resolve",
    "dismissed": "resolve",
}
"""medkit event → PagerDuty event_action.

`aborted` acknowledges: an operator stopped the automation, so a human owns the incident, but
nothing says the service is healthy, so resolving would hide a live problem. `dismissed`
resolves: medkit's probes found the service healthy again before it acted. `action` (a
policy's notify step routed here on purpose) triggers.
"""

SEVERITY: dict[Severity, str] = {
    Severity.MINOR: "warning", Severity.MAJOR: "error", Severity.CRITICAL: "critical",
}
"""medkit severity → `payload.severity`; an unknown severity is sent as `info`."""

SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255


def dedup_key(notification: Notification) -> str:
    """The incident's dedup_key, or a stable digest of it when it exceeds PagerDuty's 255 characters."""
    key = notification.dedup_key
    if len(key) <= DEDUP_KEY_LIMIT:
        return key
    return "medkit:sha256:" + hashlib.sha256(key.encode()).hexdigest()


def pagerduty_event(notification: Notification, route: PagerDutyRoute, routing_key: str) -> dict[str, Any]:
    """The Events API v2 body; a payload only on trigger, as acknowledge and resolve take none."""
    action = EVENT_ACTION[notification.event]
    event: dict[str, Any] = {
        "routing_key": routing_key, "event_action": action, "dedup_key": dedup_key(notification),
    }
    if action != "trigger":
        return event
    prefix = "[dry-run] " if notification.dry_run else ""
    details: dict[str, Any] = {
        "workflow_id": notification.workflow_id, "phase": notification.phase.value,
        "event": notification.event, "text": notification.text,
        "evidence": notification.evidence, "dry_run": notification.dry_run,
    }
    if notification.command:
        details["command"] = notification.command
    event["client"] = "medkit"
    event["payload"] = {
        "summary": clip(f"{prefix}{notification.title}: {notification.text}", SUMMARY_LIMIT),
        "source": route.source or notification.service,
        "severity": SEVERITY[notification.severity] if notification.severity else "info",
        "component": notification.service,
        "class": notification.event,
        "custom_details": details,
    }
    return event


async def send_pagerduty(
    http: httpx.AsyncClient, request: NotifyRequest, route: PagerDutyRoute
) -> NotifyResult:
    """Enqueue the event; PagerDuty answers 202, and 400 means the event itself is invalid."""
    routing_key = resolve_secret(route.routing_key_env, f"route {request.route_name!r} routing key")
    event = pagerduty_event(request.notification, route, routing_key)
    response = await post(http, route.events_url, request.route_name, timeout=route.timeout, json=event)
    return NotifyResult(route_name=request.route_name, delivered=True,
                        status_code=response.status_code,
                        detail=f"{event['event_action']} {event['dedup_key']}")
