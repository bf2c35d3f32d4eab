"""Action ledger calls never block the worker's event loop.

Another process holding SQLite's write lock makes a ledger call wait (up to the busy timeout).
Each test holds the lock from a second connection to the real ledger file while an action or
notify activity needs the ledger, and checks that a ticker on the same event loop keeps ticking
meanwhile and that the activity, once the lock is released, records exactly what it would have.
Progress is counted in ticks, never timed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.command import CommandActivities
from activities.deps import ActivityDeps
from activities.idempotency import ActionStep, DryRun, off_loop, perform_once, step_key
from activities.notify import NotifyActivities
from activities.process import ProcessSupervisor
from activities.process_pool import ProcessPool
from activities.scale import ScaleActivities
from models.actions import ActionRequest, ActionResult
from models.notifications import Notification, NotifyRequest, NotifyResult, WebhookRoute
from models.phases import Phase, Severity
from store.ledger import ActionRecord
from tests.conftest import WebhookReceiver
from workers.action_failures import ActionFailureInterceptor

T = TypeVar("T")

TICKS = 20
"""How often the ticker must tick while the activity waits for the lock."""

STEP = {"workflow_id": "recovery:svc:t", "workflow_run_id": "run-1", "activity_id": "1"}
STEP_KEY = "/".join(STEP.values())


class WriteLock:
    """A second connection to the ledger's SQLite file, which takes the write lock as another
    worker's transaction would (BEGIN IMMEDIATE) and holds it until released."""

    def __init__(self, database: Path) -> None:
        self._conn = sqlite3.connect(database, isolation_level=None)

    def take(self) -> None:
        """Take the write lock; nobody else holds it at the moments the tests call this."""
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Let the waiting writer in."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def progress(self, key: str = STEP_KEY) -> dict[str, Any] | None:
        """The step's recorded progress, read without the lock (WAL readers never wait)."""
        row = self._conn.execute("SELECT progress_json FROM action_ledger WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def close(self) -> None:
        """Release the lock if held and close the connection."""
        self.release()
        self._conn.close()


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[ActivityDeps]:
    """Real activity dependencies with a SQLite ledger in the test's state dir."""
    created = ActivityDeps.create(tmp_path / "state")
    yield created
    await created.http.aclose()


@pytest.fixture
def lock(deps: ActivityDeps, tmp_path: Path) -> Iterator[WriteLock]:
    """The other writer, on the ledger file `deps` created (and migrated)."""
    writer = WriteLock(tmp_path / "state" / "medkit.db")
    yield writer
    writer.close()


ATTEMPT = timedelta(seconds=30)
"""The start-to-close timeout RecoveryWorkflow gives a notify step (an action gets more): ledger
calls wait for the lock only within it (ActivityEnvironment's default is 1 s)."""


def environment(activity_type: str, timeout: timedelta = ATTEMPT) -> ActivityEnvironment:
    """An activity environment running as the step STEP names, with `timeout` to start-to-close."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type=activity_type, workflow_id=STEP["workflow_id"],
                                   workflow_run_id=STEP["workflow_run_id"], activity_id=STEP["activity_id"],
                                   start_to_close_timeout=timeout, schedule_to_close_timeout=None)
    return env


def command_request(argv: list[str]) -> ActionRequest:
    """A command action step as the workflow builds it."""
    return ActionRequest.model_validate({
        "workflow_id": STEP["workflow_id"], "service": "svc", "action_name": "act", "reason": "test",
        "spec": {"kind": "command", "argv": argv}})


async def ticks_while_waiting(work: asyncio.Future[Any]) -> int:
    """How often a ticker on this event loop ticked, up to TICKS, before `work` was done."""
    ticks = 0
    while ticks < TICKS and not work.done():
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


async def waits_beside_a_ticker(work: Awaitable[T], lock: WriteLock) -> T:
    """Run `work` (which meets the held lock), check the ticker kept ticking while it waited,
    then release the lock and return what `work` returns."""
    task = asyncio.ensure_future(work)
    try:
        ticks = await ticks_while_waiting(task)
        assert (ticks, task.done()) == (TICKS, False), "the ledger call blocked the event loop"
    finally:
        lock.release()
    return await task


async def test_opening_a_step_waits_for_the_lock_off_the_loop(deps: ActivityDeps, lock: WriteLock) -> None:
    """perform_once's first ledger call (begin) of a real command action."""
    lock.take()
    run = environment("run_command").run(CommandActivities(deps).run_command,
                                         command_request([sys.executable, "-c", "pass"]))
    result = await waits_beside_a_ticker(run, lock)
    assert result.ok and not result.replayed and result.data["exit_code"] == 0
    assert lock.progress() == {"running": False}


@pytest.mark.parametrize("meets_the_lock", ["recording progress", "recording the result"])
async def test_recording_a_step_waits_for_the_lock_off_the_loop(deps: ActivityDeps, lock: WriteLock,
                                                                meets_the_lock: str) -> None:
    """ActionStep.record and perform_once's final record, each meeting the lock in turn."""
    request = command_request(["true"])

    async def perform(step: ActionStep) -> ActionResult:
        lock.take()
        if meets_the_lock == "recording progress":
            await step.record(stage="half way")
        return ActionResult(action_name=request.action_name, kind="command", ok=True, detail="done")

    def dry_run() -> DryRun:
        return DryRun("nothing")

    run = environment("run_command").run(perform_once, deps.ledger, request, dry_run, perform)
    result = await waits_beside_a_ticker(run, lock)
    assert result.detail == "done" and not result.replayed
    assert lock.progress() == ({"stage": "half way"} if meets_the_lock == "recording progress" else {})
    again = await environment("run_command").run(perform_once, deps.ledger, request, dry_run, perform)
    assert again.replayed and again.detail == "done"


async def test_looking_up_the_previous_scale_waits_off_the_loop(deps: ActivityDeps, lock: WriteLock) -> None:
    """`replicas: previous` reads the last scale's count from the ledger before anything else."""
    target = "command true"
    earlier = deps.ledger.begin("old/run/1", workflow_id="old", service="svc", activity="scale_command")
    deps.ledger.progress(earlier.key, target=target, restore=False, previous_replicas=3, replicas=5)
    deps.ledger.finish(earlier.key, "{}")
    request = ActionRequest.model_validate({
        "workflow_id": STEP["workflow_id"], "service": "svc", "action_name": "scale", "reason": "test",
        "dry_run": True, "spec": {"kind": "scale_command", "argv": ["true", "{replicas}"],
                                  "replicas": "previous"}})
    lock.take()
    pool = ProcessPool(deps.state_dir, ProcessSupervisor(deps.state_dir))
    scale = ScaleActivities(deps, pool).scale_command
    result = await waits_beside_a_ticker(environment("scale_command").run(scale, request), lock)
    assert result.simulated and result.data["replicas"] == 3


async def test_a_notification_waits_for_the_lock_off_the_loop(
        deps: ActivityDeps, lock: WriteLock, webhook_receiver: WebhookReceiver) -> None:
    """The notify activity's ledger record, before it posts."""
    note = Notification(workflow_id=STEP["workflow_id"], service="svc", event="escalation",
                        phase=Phase.MANUAL_INTERVENTION, severity=Severity.MAJOR, title="svc: help",
                        text="help", dedup_key="d", notification_id="n/1")
    route = WebhookRoute(url=f"http://127.0.0.1:{webhook_receiver.port}/hook")
    lock.take()
    notify = NotifyActivities(deps).notify
    run = environment("notify").run(notify, NotifyRequest(route_name="hook", route=route, notification=note))
    result: NotifyResult = await waits_beside_a_ticker(run, lock)
    assert result.delivered and not result.duplicate and len(webhook_receiver.received) == 1


DEFAULT_POOL_MAX = 32
"""The most threads asyncio's default pool has (min(32, CPUs + 4))."""


async def test_ledger_calls_waiting_for_the_lock_leave_the_default_pool_free(
        deps: ActivityDeps, lock: WriteLock) -> None:
    """More ledger calls wait for the lock than the default pool has threads; the work other
    activities run in that pool (a probe's blocking check, the DNS lookup of an HTTP probe or a
    notification) still runs meanwhile, and the ledger calls all write once the lock is free."""
    calls = DEFAULT_POOL_MAX + 8
    lock.take()

    async def open_steps() -> list[ActionRecord]:
        return await asyncio.gather(*(
            off_loop(deps.ledger.begin, f"recovery:svc:t/run-1/{index}", workflow_id="recovery:svc:t",
                     service="svc", activity="notify") for index in range(calls)))

    opening = asyncio.ensure_future(environment("notify").run(open_steps))
    try:
        for _ in range(5):  # the ledger calls are handed to their threads (a few loop passes)
            await asyncio.sleep(0.01)
        other_work = asyncio.ensure_future(asyncio.gather(
            asyncio.to_thread(lambda: "probed"),
            asyncio.get_running_loop().getaddrinfo("localhost", 80)))
        ticks = await ticks_while_waiting(other_work)
        assert (ticks < TICKS, other_work.done(), opening.done()) == (True, True, False), \
            "ledger calls waiting for the lock held up the default pool's other work"
    finally:
        lock.release()
    assert len(await opening) == calls
    assert all(lock.progress(f"recovery:svc:t/run-1/{index}") == {} for index in range(calls))


class BreakingAction:
    """An action that opens its ledger row as every action does, then meets another writer's
    lock, and fails: the worker's interceptor must note the failure on the row."""

    def __init__(self, deps: ActivityDeps, lock: WriteLock) -> None:
        self._deps = deps
        self._lock = lock
        self.locked = asyncio.Event()
        self.key = ""

    @activity.defn(name="breaking_action")
    async def run(self, request: ActionRequest) -> ActionResult:
        """Open the step (no other writer yet), let the other writer take the lock, and fail."""
        self.key = step_key()
        self._deps.ledger.begin(self.key, workflow_id=request.workflow_id, service=request.service,
                                activity="breaking_action")
        self._lock.take()
        self.locked.set()
        raise ApplicationError("the action broke", type="ActionBroke", non_retryable=True)


@workflow.defn(sandboxed=False)
class OneActionWorkflow:
    """Runs one action as a local activity, once, and returns how it failed."""

    @workflow.run
    async def run(self, request: ActionRequest) -> str:
        """The failure's message, or "ok"."""
        try:
            await workflow.execute_local_activity(
                "breaking_action", request, result_type=ActionResult,
                start_to_close_timeout=timedelta(seconds=60), retry_policy=RetryPolicy(maximum_attempts=1))
        except (ActivityError, ApplicationError) as err:  # a local activity's may arrive bare
            return str(err.cause or err)
        return "ok"


async def test_a_failed_attempt_is_recorded_off_the_loop(ts_env: WorkflowEnvironment, deps: ActivityDeps,
                                                         lock: WriteLock) -> None:
    """The worker's ActionFailureInterceptor notes the failure while the lock is held elsewhere."""
    action, queue = BreakingAction(deps, lock), f"q-{uuid.uuid4().hex[:8]}"
    async with Worker(ts_env.client, task_queue=queue, workflows=[OneActionWorkflow],
                      activities=[action.run], interceptors=[ActionFailureInterceptor(deps.ledger)]):
        handle = await ts_env.client.start_workflow(
            OneActionWorkflow.run, command_request(["true"]), id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=queue)
        outcome = asyncio.ensure_future(handle.result())
        try:
            await action.locked.wait()
            assert await ticks_while_waiting(outcome) == TICKS and not outcome.done()
            assert lock.progress(action.key) == {}
        finally:
            lock.release()
        assert "the action broke" in await outcome
    failed = (lock.progress(action.key) or {})["failed"]
    assert (failed["type"], failed["attempt"]) == ("ActionBroke", 1)
    assert failed["error"].endswith("the action broke")
