"""The notification activity: deliver one notification to one route, once per step.

Delivery is dispatched by the route's kind to one module per channel (webhook, Slack,
PagerDuty, email); every delivery is recorded in the ledger under the step key, so a retried
or replayed activity returns the recorded result instead of posting twice.
"""

from __future__ import annotations

from typing import assert_never

from temporalio import activity

from activities.deps import ActivityDeps
from activities.idempotency import attempt_ends, ledger_deadline, off_loop, record_result, step_key
from activities.notify_delivery import raise_for_delivery, resolve_secret
from activities.notify_email import send_email
from activities.notify_pagerduty import send_pagerduty
from activities.notify_slack import send_slack
from activities.notify_webhook import send_webhook
from models.notifications import (
    EmailRoute,
    NotifyRequest,
    NotifyResult,
    PagerDutyRoute,
    SlackRoute,
    WebhookRoute,
)

__all__ = ["NotifyActivities", "deliver", "raise_for_delivery", "resolve_secret"]


async def deliver(deps: ActivityDeps, request: NotifyRequest) -> NotifyResult:
    """Send the notification through the channel its route names."""
    route = request.route
    if isinstance(route, WebhookRoute):
        return await send_webhook(deps.http, request, route)
    if isinstance(route, SlackRoute):
        return await send_slack(deps.http, request, route)
    if isinstance(route, PagerDutyRoute):
        return await send_pagerduty(deps.http, request, route)
    if isinstance(route, EmailRoute):
        return await send_email(request, route)
    assert_never(route)


class NotifyActivities:
    """The notification activity, recording each delivery so a retry never posts twice."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="notify")
    async def notify(self, request: NotifyRequest) -> NotifyResult:
        """Deliver one notification to one route.

        Opening the ledger row waits for the lock LEDGER_WAIT_SECONDS, then fails with the
        retryable LedgerBusy before anything is sent; once sent, recording the result waits up to
        the attempt's end and, if the lock is still held, returns the result unrecorded rather
        than fail an attempt whose retry would send again."""
        ledger = self._deps.ledger
        ends = attempt_ends()
        record = await off_loop(ledger.begin, step_key(), workflow_id=request.notification.workflow_id,
                                service=request.notification.service, activity="notify",
                                deadline=ledger_deadline(ends))
        if record.result_json is not None:
            previous = NotifyResult.model_validate_json(record.result_json)
            return previous.model_copy(update={"duplicate": True})
        result = await deliver(self._deps, request)
        await record_result(ledger, record.key, result.model_dump_json(), ends)
        return result
