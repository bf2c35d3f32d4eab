"""Slack incoming-webhook delivery: a Block Kit message with a plain-text fallback."""

from __future__ import annotations

import re
from typing import Any

import httpx

from activities.notify_delivery import clip, post, resolve_secret
from models.notifications import Notification, NotifyRequest, NotifyResult, SlackRoute

HEADER_LIMIT = 150
"""Slack's maximum for a header block's plain_text."""
TEXT_LIMIT = 3000
"""Slack's maximum for a section's text (and what medkit keeps of the fallback text)."""
FIELD_LIMIT = 2000
"""Slack's maximum for one section field."""

_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(text: str, limit: int = TEXT_LIMIT) -> dict[str, str]:
    """An escaped mrkdwn text object within `limit`, never cutting an entity in half."""
    escaped = escape(text)
    if len(escaped) > limit:
        escaped = _PARTIAL_ENTITY.sub("", escaped[: limit - 1]) + "…"
    return {"type": "mrkdwn", "text": escaped}


def _field(label: str, value: str) -> dict[str, str]:
    return mrkdwn(f"*{label}*\n{value}", FIELD_LIMIT)


def slack_message(notification: Notification) -> dict[str, Any]:
    """The webhook body: header, facts, evidence, the decision command, and a `text` fallback."""
    title = ("[dry-run] " if notification.dry_run else "") + notification.title
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(title, HEADER_LIMIT)}},
        {"type": "section", "text": mrkdwn(notification.text), "fields": [
            _field("Service", notification.service),
            _field("Severity", notification.severity.value if notification.severity else "unknown"),
            _field("Phase", notification.phase.value),
            _field("Event", notification.event),
        ]},
    ]
    if notification.evidence:
        evidence = "\n".join(f"• {line}" for line in notification.evidence)
        blocks.append({"type": "section", "text": mrkdwn(f"*Evidence*\n{evidence}")})
    if notification.command:
        blocks.append({"type": "section",
                       "text": mrkdwn(f"*Decide with*\n```{notification.command}```")})
    blocks.append({"type": "context", "elements": [
        mrkdwn(f"medkit · workflow {notification.workflow_id}", FIELD_LIMIT),
    ]})
    fallback = f"{title}: {notification.text}"
    return {"text": mrkdwn(fallback)["text"], "blocks": blocks}


async def send_slack(http: httpx.AsyncClient, request: NotifyRequest, route: SlackRoute) -> NotifyResult:
    """POST the Block Kit message to the webhook; Slack answers 200 `ok` when it is posted."""
    url = resolve_secret(route.webhook_url_env, f"route {request.route_name!r} Slack webhook URL")
    response = await post(http, url, request.route_name, timeout=route.timeout,
                          json=slack_message(request.notification))
    return NotifyResult(route_name=request.route_name, delivered=True,
                        status_code=response.status_code)
