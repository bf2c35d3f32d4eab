"""A ledger write that meets another writer's lock ends inside its attempt, never as a timeout.

Each test runs the real notify activity on a real worker, posting to a real local webhook, while
a second connection to the real SQLite ledger holds the write lock (as another worker's
transaction would): opening the step fails with the retryable LedgerBusy before anything is
sent; recording the result of a notification already sent gives up inside the attempt and
returns the result, so no retry sends it again.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.idempotency import LEDGER_BUSY
from activities.notify import NotifyActivities
from models.notifications import Notification, NotifyRequest, NotifyResult, WebhookRoute
from models.phases import Phase, Severity
from tests.conftest import WebhookReceiver
from workflows.recovery import NOTIFY_RETRY


class Attempts(BaseModel):
    """One notify step: its request, the start-to-close timeout and how many attempts it gets."""

    request: NotifyRequest
    timeout_seconds: float
    maximum_attempts: int


class Ended(BaseModel):
    """How the step ended: its result, or its failure's type, message and retryability."""

    result: NotifyResult | None = None
    error_type: str | None = None
    message: str = ""
    non_retryable: bool = False


@workflow.defn(sandboxed=False)
class NotifyStepWorkflow:
    """One notify step with NOTIFY_RETRY (capped to the plan's attempts), as the recovery runs it."""

    @workflow.run
    async def run(self, plan: Attempts) -> Ended:
        """The step's result or failure."""
        try:
            result = await workflow.execute_activity(
                "notify", plan.request, result_type=NotifyResult,
                start_to_close_timeout=timedelta(seconds=plan.timeout_seconds),
                retry_policy=dataclasses.replace(NOTIFY_RETRY, maximum_attempts=plan.maximum_attempts))
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                return Ended(error_type=cause.type, message=cause.message,
                             non_retryable=cause.non_retryable)
            return Ended(error_type=type(cause).__name__, message=str(cause))
        return Ended(result=result)


def notify_request(receiver: WebhookReceiver) -> NotifyRequest:
    """An escalation to the receiver, as the recovery sends it."""
    note = Notification(workflow_id="recovery:svc:t", service="svc", event="escalation",
                        phase=Phase.MANUAL_INTERVENTION, severity=Severity.MAJOR, title="svc: help",
                        text="help", dedup_key="d", notification_id="d/1")
    return NotifyRequest(route_name="hook", route=WebhookRoute(url=receiver.url), notification=note)


class OtherWriter:
    """A second connection to the ledger file that takes SQLite's write lock (BEGIN IMMEDIATE) as
    another worker's transaction would, from any thread, and holds it until released."""

    def __init__(self, database: Path) -> None:
        self._conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self._mutex = threading.Lock()

    def take(self) -> None:
        """Take the write lock (nobody else holds it when the tests call this)."""
        with self._mutex:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")

    def rows(self) -> list[tuple[str, str | None]]:
        """Every ledger row's activity and result, read without the lock (WAL readers never wait)."""
        with self._mutex:
            return list(self._conn.execute("SELECT activity, result_json FROM action_ledger"))

    def close(self) -> None:
        """Release the lock if held, and close."""
        with self._mutex:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._conn.close()


async def run_step(env: WorkflowEnvironment, deps: ActivityDeps, plan: Attempts) -> Ended:
    """Run the step on a worker with the real notify activity."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    async with Worker(env.client, task_queue=queue, workflows=[NotifyStepWorkflow],
                      activities=[NotifyActivities(deps).notify]):
        return await env.client.execute_workflow(
            NotifyStepWorkflow.run, plan, id=f"notify-{uuid.uuid4().hex[:8]}", task_queue=queue)


async def test_a_locked_ledger_fails_the_attempt_retryably_before_sending(
        ts_env: WorkflowEnvironment, tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    """With the lock held from the start, an attempt with the recovery's 30 s timeout fails with
    LedgerBusy (retryable, so NOTIFY_RETRY tries again) instead of timing out with nothing said,
    and sends nothing."""
    deps = ActivityDeps.create(tmp_path / "state")
    writer = OtherWriter(tmp_path / "state" / "medkit.db")
    try:
        writer.take()
        ended = await run_step(ts_env, deps, Attempts(request=notify_request(webhook_receiver),
                                                      timeout_seconds=30, maximum_attempts=1))
        assert (ended.error_type, ended.non_retryable) == (LEDGER_BUSY, False), ended
        assert "database is locked" in ended.message
        assert webhook_receiver.received == [] and writer.rows() == []
    finally:
        writer.close()
        await deps.http.aclose()


async def test_a_sent_notification_whose_result_cannot_be_recorded_is_not_sent_again(
        ts_env: WorkflowEnvironment, tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    """The first ledger write (opening the step) succeeds; the receiver, as it gets the post, lets
    another writer take the lock, so the second (the result) cannot be made. The attempt gives up
    on it inside its timeout and returns the delivery: the step is not retried, and the receiver
    gets the notification once. (Before: the write waited 30 s, so the attempt timed out with
    its outcome unknown, and a retry finding no result sent again.) A short timeout keeps the
    test quick; the wait scales with it."""
    deps = ActivityDeps.create(tmp_path / "state")
    writer = OtherWriter(tmp_path / "state" / "medkit.db")
    webhook_receiver.on_post = writer.take
    try:
        ended = await run_step(ts_env, deps, Attempts(request=notify_request(webhook_receiver),
                                                      timeout_seconds=10, maximum_attempts=2))
        assert ended.result is not None, ended
        assert ended.result.delivered and not ended.result.duplicate
        assert len(webhook_receiver.received) == 1
        assert writer.rows() == [("notify", None)]  # opened, its result left unrecorded
    finally:
        writer.close()
        await deps.http.aclose()
