"""The durable breaker entity on the time-skipping server: failures in a row open it, its open
time is a durable timer, trials start a gradual ramp (or close it) or reopen it, the ramp's steps
are durable timers and a failure while ramping reopens it, operators trip and reset it, and its
state survives continue-as-new."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from models.breaker_entity import (
    BreakerCommand,
    BreakerEntitySettings,
    BreakerEntityState,
    OutcomeReport,
    breaker_workflow_id,
)
from models.policy import ServicePolicy
from tests.conftest import eventually, free_port, policy_file, running
from tests.test_gateway import service_policy
from workers.worker import build_worker
from workflows.breaker import BreakerEntityWorkflow


@pytest_asyncio.fixture
async def worker(ts_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A worker for the entity on a task queue of its own."""
    task_queue = f"breaker-{uuid.uuid4().hex[:8]}"
    async with Worker(ts_env.client, task_queue=task_queue, workflows=[BreakerEntityWorkflow]):
        yield task_queue


async def start(env: WorkflowEnvironment, task_queue: str, **settings: object) -> WorkflowHandle[
        BreakerEntityWorkflow, None]:
    name = f"payments-{uuid.uuid4().hex[:6]}"
    state = BreakerEntityState(settings=BreakerEntitySettings.model_validate({"name": name, **settings}))
    return await env.client.start_workflow(BreakerEntityWorkflow.run, state, id=breaker_workflow_id(name),
                                           task_queue=task_queue)


async def report(handle: WorkflowHandle[BreakerEntityWorkflow, None], *outcomes: bool) -> None:
    for n, success in enumerate(outcomes):
        await handle.signal(BreakerEntityWorkflow.report,
                            OutcomeReport(reporter=f"pod-{n % 2}", success=success, detail="HTTP 503"))


async def state_is(handle: WorkflowHandle[BreakerEntityWorkflow, None], wanted: str) -> BreakerEntityState:
    async def current() -> BreakerEntityState | None:
        status = await handle.query(BreakerEntityWorkflow.status)
        return status if status.state == wanted else None
    result: BreakerEntityState = await eventually(current)
    return result


async def test_failures_open_the_timer_half_opens_and_trials_close_or_reopen(
        ts_env: WorkflowEnvironment, worker: str) -> None:
    handle = await start(ts_env, worker, failure_threshold=3, open_for="30s", half_open_successes=2,
                         ramp_for="0s")
    try:
        await report(handle, False, False, True, False, False)
        status = await handle.query(BreakerEntityWorkflow.status)
        assert (status.state, status.consecutive_failures) == ("closed", 2)  # a success broke the run
        await report(handle, False)
        opened = await state_is(handle, "open")
        assert opened.open_until is not None
        assert opened.transitions[-1].reason == "3 failures in a row (last from pod-0: HTTP 503)"
        await report(handle, True, True)  # calls from before it opened change nothing
        assert (await handle.query(BreakerEntityWorkflow.status)).state == "open"

        await ts_env.sleep(timedelta(seconds=31))
        await state_is(handle, "half_open")
        await report(handle, True, False)  # one trial succeeds, the next fails: open again
        reopened = await state_is(handle, "open")
        assert reopened.transitions[-1].reason == "trial call failed (pod-1: HTTP 503)"
        await ts_env.sleep(timedelta(seconds=31))
        await state_is(handle, "half_open")
        await report(handle, True, True)
        closed = await state_is(handle, "closed")
        assert [(t.from_state, t.to_state) for t in closed.transitions] == [
            ("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
            ("half_open", "closed")]
        assert closed.open_until is None
    finally:
        await handle.terminate("test over")


async def test_trials_start_a_ramp_whose_timed_steps_raise_traffic_until_it_closes(
        ts_env: WorkflowEnvironment, worker: str) -> None:
    handle = await start(ts_env, worker, failure_threshold=1, open_for="30s", half_open_successes=2,
                         trial_fraction=0.2, ramp_for="60s", ramp_steps=4)
    try:
        assert (await handle.query(BreakerEntityWorkflow.status)).traffic_fraction == 1.0
        await report(handle, False)
        assert (await state_is(handle, "open")).traffic_fraction == 0.0
        await ts_env.sleep(timedelta(seconds=31))
        assert (await state_is(handle, "half_open")).traffic_fraction == 0.2
        await report(handle, True, True)
        ramping = await state_is(handle, "ramping")
        assert (ramping.ramp_step, ramping.traffic_fraction) == (1, 0.25)
        assert ramping.next_step_at is not None
        fractions = [ramping.traffic_fraction]
        for step in (2, 3, 4):
            await ts_env.sleep(timedelta(seconds=15))

            async def reached(wanted: int = step) -> BreakerEntityState | None:
                status = await handle.query(BreakerEntityWorkflow.status)
                return status if status.ramp_step == wanted else None
            fractions.append((await eventually(reached)).traffic_fraction)
        assert fractions == [0.25, 0.5, 0.75, 1.0]
        await report(handle, True)  # successes while ramping change nothing
        await ts_env.sleep(timedelta(seconds=15))
        closed = await state_is(handle, "closed")
        assert closed.traffic_fraction == 1.0 and closed.next_step_at is None
        assert [(t.from_state, t.to_state) for t in closed.transitions] == [
            ("closed", "open"), ("open", "half_open"), ("half_open", "ramping"), ("ramping", "closed")]
        assert closed.transitions[-1].reason == "traffic ramp completed"
    finally:
        await handle.terminate("test over")


async def test_a_failure_while_ramping_reopens(ts_env: WorkflowEnvironment, worker: str) -> None:
    handle = await start(ts_env, worker, failure_threshold=1, open_for="30s", half_open_successes=1,
                         ramp_for="1h", ramp_steps=4)
    try:
        await report(handle, False)
        await state_is(handle, "open")
        await ts_env.sleep(timedelta(seconds=31))
        await state_is(handle, "half_open")
        await report(handle, True)
        await state_is(handle, "ramping")
        await ts_env.sleep(timedelta(minutes=16))

        async def second_step() -> BreakerEntityState | None:
            status = await handle.query(BreakerEntityWorkflow.status)
            return status if status.ramp_step == 2 else None
        assert (await eventually(second_step)).traffic_fraction == 0.5
        await report(handle, False)
        reopened = await state_is(handle, "open")
        assert reopened.transitions[-1].reason == "call failed while ramping at 50% (pod-0: HTTP 503)"
        assert (reopened.traffic_fraction, reopened.ramp_step, reopened.next_step_at) == (0.0, 0, None)
        await ts_env.sleep(timedelta(seconds=31))
        assert (await state_is(handle, "half_open")).transitions[-1].reason == "open time elapsed"
    finally:
        await handle.terminate("test over")


async def test_operators_trip_and_reset_with_an_update_that_answers_the_status(
        ts_env: WorkflowEnvironment, worker: str) -> None:
    handle = await start(ts_env, worker, open_for="1h")
    try:
        tripped = await handle.execute_update(BreakerEntityWorkflow.command, BreakerCommand(
            action="trip", operator="alice", reason="provider announced maintenance"))
        assert tripped.state == "open"
        assert tripped.transitions[-1].reason == "trip by alice: provider announced maintenance"
        reset = await handle.execute_update(BreakerEntityWorkflow.command, BreakerCommand(
            action="reset", operator="bob", reason="maintenance over"))
        assert reset.state == "closed" and reset.open_until is None
        assert [t.to_state for t in reset.transitions] == ["open", "closed"]
    finally:
        await handle.terminate("test over")


async def test_state_survives_continue_as_new(ts_env: WorkflowEnvironment, worker: str) -> None:
    handle = await start(ts_env, worker, failure_threshold=4, reports_per_run=3, open_for="1h")
    first_run = (await handle.describe()).run_id
    try:
        await report(handle, False, False, False, False)  # the 3rd report ends the first run

        async def continued() -> BreakerEntityState | None:
            latest = ts_env.client.get_workflow_handle(handle.id)
            if (await latest.describe()).run_id == first_run:
                return None
            status = await latest.query(BreakerEntityWorkflow.status)
            return status if status.state == "open" else None
        status: BreakerEntityState = await eventually(continued)
        assert status.transitions[-1].reason.startswith("4 failures in a row")
        assert status.reports < 3
    finally:
        await ts_env.client.get_workflow_handle(handle.id).terminate("test over")


async def test_medkit_worker_runs_the_entity(
        ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps) -> None:
    own_policy = policy_file(ServicePolicy.model_validate(service_policy("svc", free_port())))
    async with running(build_worker(ts_env.client, queue, deps, own_policy)):
        handle = await start(ts_env, queue, failure_threshold=1)
        try:
            await report(handle, False)
            assert (await state_is(handle, "open")).transitions[-1].from_state == "closed"
        finally:
            await handle.terminate("test over")
