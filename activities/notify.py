"""The notification activity: deliver one notification to one route, once per step."""

from __future__ import annotations

import os

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.idempotency import step_key
from models.notifications import NotifyRequest, NotifyResult, WebhookRoute


def resolve_secret(env_name: str, what: str) -> str:
    """Read a secret from the worker's environment; name the variable, never the value, on error."""
    value = os.environ.get(env_name)
    if not value:
        raise ApplicationError(
            f"{what} is taken from env var {env_name}, which is not set on this worker",
            type="MissingSecret", non_retryable=True,
        )
    return value


def raise_for_delivery(response: httpx.Response, route_name: str) -> None:
    """Retry 408/429/5xx; a 4xx means the request itself is wrong, so retrying cannot help."""
    code = response.status_code
    if code < 400:
        return
    message = f"route {route_name!r} answered HTTP {code}"
    if code in (408, 429) or code >= 500:
        raise ApplicationError(message, type="DeliveryRetryable")
    raise ApplicationError(message, type="DeliveryRejected", non_retryable=True)


async def send_webhook(http: httpx.AsyncClient, request: NotifyRequest) -> NotifyResult:
    """POST the notification as JSON, with its notification id as the Idempotency-Key header."""
    route = request.route
    assert isinstance(route, WebhookRoute)
    url = route.url or resolve_secret(route.url_env or "", f"route {request.route_name!r} URL")
    try:
        response = await http.post(
            url, json=request.notification.model_dump(mode="json"),
            headers={"Idempotency-Key": request.notification.notification_id},
            timeout=route.timeout.total_seconds(),
        )
    except httpx.HTTPError as err:
        raise ApplicationError(
            f"route {request.route_name!r} unreachable: {type(err).__name__}",
            type="DeliveryRetryable",
        ) from err
    raise_for_delivery(response, request.route_name)
    return NotifyResult(route_name=request.route_name, delivered=True,
                        status_code=response.status_code)


class NotifyActivities:
    """The notification activity, recording each delivery so a retry never posts twice."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="notify")
    async def notify(self, request: NotifyRequest) -> NotifyResult:
        """Deliver one notification to one route."""
        ledger = self._deps.ledger
        record = ledger.begin(step_key(), workflow_id=request.notification.workflow_id,
                              service=request.notification.service, activity="notify")
        if record.result_json is not None:
            previous = NotifyResult.model_validate_json(record.result_json)
            return previous.model_copy(update={"duplicate": True})
        result = await send_webhook(self._deps.http, request)
        ledger.finish(record.key, result.model_dump_json())
        return result
