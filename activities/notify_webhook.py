"""Generic JSON webhook delivery, optionally signed with HMAC-SHA256 (scheme in WebhookRoute)."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from activities.notify_delivery import post, resolve_secret
from models.notifications import NotifyRequest, NotifyResult, WebhookRoute

SIGNATURE_HEADER = "X-Medkit-Signature"
TIMESTAMP_HEADER = "X-Medkit-Timestamp"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the header value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


async def send_webhook(http: httpx.AsyncClient, request: NotifyRequest, route: WebhookRoute) -> NotifyResult:
    """POST the notification as JSON with its id as the Idempotency-Key, signed when configured."""
    url = route.url or resolve_secret(route.url_env or "", f"route {request.route_name!r} URL")
    body = request.notification.model_dump_json().encode()
    headers = {"Content-Type": "application/json",
               "Idempotency-Key": request.notification.notification_id}
    if route.hmac_secret_env is not None:
        secret = resolve_secret(route.hmac_secret_env, f"route {request.route_name!r} HMAC secret")
        timestamp = int(time.time())
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    response = await post(http, url, request.route_name, timeout=route.timeout,
                          content=body, headers=headers)
    return NotifyResult(route_name=request.route_name, delivered=True,
                        status_code=response.status_code)
