"""The fleet coordinator's bookkeeping where timing could lose a lease: across continue-as-new,
and when a recovery hands its lease back while its request is still on its way.

The coordinator continues as new whenever Temporal suggests it; a real server suggests it after
thousands of events, so the continue-as-new test runs a dev server of its own that suggests it
after a few dozen, and a busy fleet makes the coordinator continue as new many times a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.deps import ActivityDeps
from activities.fleet import FleetActivities
from models.fleet import (
    ClosedCheck,
    FleetSpec,
    FleetState,
    LeaseDecision,
    LeaseRequest,
    coordinator_workflow_id,
)
from models.phases import DecisionKind, Phase
from tests.conftest import WebhookReceiver, eventually, policy_file, running, start_dev_server
from tests.scripted import (
    Script,
    detection,
    lease_and_give_back,
    save_history,
    scripted_policy,
    start,
    wait_for_phase,
)
from tests.test_recovery_paths import operator
from workers.client import send_decision
from workers.worker import build_worker
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow

GONE_RUN = "0b6f6c1e-9d7a-4e3c-8f1e-000000000000"
"""The run id of a recovery that no longer runs, a UUID as real run ids are (one that is not is
closed as well: see the last test)."""

SUGGEST_CONTINUE_AS_NEW_AFTER = 40
"""History events after which this server suggests continue-as-new (Temporal's default: 4096)."""


@pytest_asyncio.fixture
async def early_can_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of the test's own that suggests continue-as-new after a few dozen events."""
    env = await start_dev_server(
        "--dynamic-config-value",
        f"limit.historyCount.suggestContinueAsNew={SUGGEST_CONTINUE_AS_NEW_AFTER}")
    yield env
    await env.shutdown()


async def _runs(client: Client, workflow_id: str) -> list[str]:
    """The run ids the workflow id has had (each continue-as-new starts one)."""
    return [e.run_id async for e in client.list_workflows(f'WorkflowId = "{workflow_id}"')]


async def _save_a_run_that_checked_a_carried_deadline(client: Client, workflow_id: str,
                                                       runs: list[str]) -> None:
    """With MEDKIT_RECORD_HISTORIES=1, save for the replay tests a run that started with the
    check's deadline carried over and checked the holders."""
    if os.environ.get("MEDKIT_RECORD_HISTORIES") != "1":
        return
    for run_id in runs:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        carried = json.loads(started.input.payloads[0].data).get("next_check") is not None
        if carried and any(e.HasField("activity_task_scheduled_event_attributes")
                           for e in history.events):
            await save_history(handle, "fleet_check_after_continue_as_new")
            return
    raise AssertionError("no run checked its holders with a deadline carried over")


async def test_a_coordinator_that_continues_as_new_often_still_checks_its_holders(
    early_can_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """The next check of the holders is carried into the next run: were it restarted from zero
    by each continue-as-new, a coordinator continuing as new more often than `reap_interval`
    would never check, and a crashed holder would keep its lease for ever."""
    client = early_can_env.client
    fleet = FleetActivities(client)
    reap_interval = timedelta(seconds=3)
    limits = FleetSpec(reap_interval=reap_interval)
    crashed = LeaseRequest(request_id="crashed", service="checkout", workflow_id="recovery:gone",
                           run_id=GONE_RUN, task_queue=queue, limits=limits)
    coordinator = client.get_workflow_handle_for(FleetCoordinatorWorkflow.run,
                                                 coordinator_workflow_id(queue))
    policies = policy_file(scripted_policy("http://127.0.0.1:9/hook"))  # no recovery runs here
    reclaimed = False
    async with running(build_worker(client, queue, deps, policies)):
        assert (await fleet.request_fleet_lease(crashed)).verdict == "granted"
        # A request and a release at a time, back to back, until the crashed holder's lease is
        # reclaimed; the budget is generous (many reap intervals), only there to end the test
        # when it is not.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20 * reap_interval.total_seconds()
        n = 0
        while loop.time() < give_up:
            n += 1
            await lease_and_give_back(fleet, crashed, n)
            if "checkout" not in (await coordinator.query(FleetCoordinatorWorkflow.leases)).holders:
                reclaimed = True
                break
    runs = await _runs(client, coordinator.id)
    assert len(runs) > 1, "the coordinator never continued as new: the test did not test anything"
    assert reclaimed, f"the crashed holder kept its lease through {len(runs)} runs of the coordinator"
    await _save_a_run_that_checked_a_carried_deadline(client, coordinator.id, runs)


class LeaseRequestOnItsWay:
    """`request_fleet_lease` whose update reaches the coordinator only when the test says so.

    It stands for a request already sent when the recovery gives it up: cancelling the activity
    does not take back an update the server has admitted (or a call already on the wire), and
    the coordinator still applies it, after whatever the recovery sends next."""

    def __init__(self, client: Client) -> None:
        self._fleet = FleetActivities(client)
        self.sent = asyncio.Event()
        self.arrive = asyncio.Event()
        self.answered: asyncio.Task[LeaseDecision] | None = None

    @activity.defn(name="request_fleet_lease")
    async def request_fleet_lease(self, request: LeaseRequest) -> LeaseDecision:
        """Send the request (once, whatever the attempt) and wait for the coordinator's answer;
        a cancelled activity stops waiting, the request goes on."""
        if self.answered is None:
            self.answered = asyncio.ensure_future(self._send(request))
        self.sent.set()
        return await asyncio.shield(self.answered)

    async def _send(self, request: LeaseRequest) -> LeaseDecision:
        await self.arrive.wait()
        return await self._fleet.request_fleet_lease(request)


async def test_a_lease_given_back_before_its_request_arrived_is_not_granted_afterwards(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A recovery aborted while its lease request is on its way hands the lease back when it
    ends; were the release sent at once, the coordinator would apply it first (there is nothing
    to release yet) and then grant the request, leaving the service leased to a recovery that
    has ended until the next check of the holders. The release waits for the answer instead."""
    client = ts_env.client
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    lease = LeaseRequestOnItsWay(client)
    coordinator = client.get_workflow_handle_for(FleetCoordinatorWorkflow.run,
                                                 coordinator_workflow_id(queue))

    async def nobody_holds_it() -> FleetState | None:
        state = await coordinator.query(FleetCoordinatorWorkflow.leases)
        return None if state.holders or state.waiting else state

    async with script.worker(client, queue, deps, request_lease=lease.request_fleet_lease):
        handle = await start(client, queue, policy, detection())
        await asyncio.wait_for(lease.sent.wait(), timeout=30)
        await send_decision(client, handle.id, DecisionKind.ABORT, operator("wrong service"))
        await wait_for_phase(handle, Phase.ABORTED)
        lease.arrive.set()
        assert lease.answered is not None
        assert (await asyncio.wait_for(lease.answered, timeout=30)).verdict == "granted"
        # Before awaiting the result, which lets the server skip time up to the coordinator's
        # check of its holders (that check would reclaim a lease left behind, a minute late).
        await eventually(nobody_holds_it)
        result = await handle.result()
        await save_history(handle, "abort_while_lease_requested")
    assert result.phase == Phase.ABORTED
    assert script.actions == []


LATE_ANSWER_SECONDS = 0.5
"""Long after the assessment's scripted probes, well inside one workflow task."""


class SlowLeaseAnswer:
    """`request_fleet_lease` answered a moment late, after the recovery's assessment is done, so
    the recovery reaches the lease while the request is still running, in the same workflow task."""

    def __init__(self, client: Client) -> None:
        self._fleet = FleetActivities(client)

    @activity.defn(name="request_fleet_lease")
    async def request_fleet_lease(self, request: LeaseRequest) -> LeaseDecision:
        """Wait half a second, then ask the coordinator."""
        await asyncio.sleep(LATE_ANSWER_SECONDS)
        return await self._fleet.request_fleet_lease(request)


async def test_a_lease_answered_after_the_recovery_waits_for_it_replays(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A run whose lease answer came after it started waiting for it replays.

    On replay a local activity's result may reach the workflow at another moment than it did
    live, so nothing the run records may depend on whether the answer had come yet. The first
    version of `release-after-lease-answer` called `workflow.patched` only when it had not: a
    status query that replayed an evicted run (tests/test_gateway.py, once under load) failed
    with "patch marker encountered ... but there is no corresponding change command". The patch
    is now decided when the request is made. This replay did not fail on that first version
    here (the replayer resolved the answer in the order it was recorded), so it guards the late
    answer's path, not that exact interleaving."""
    client = ts_env.client
    script = Script()
    script.probe("http", False, False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(client, queue, deps, request_lease=SlowLeaseAnswer(client).request_fleet_lease):
        handle = await start(client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.RECOVERED
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[RecoveryWorkflow, FleetCoordinatorWorkflow],
                        data_converter=pydantic_data_converter)
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure


async def test_a_holder_whose_run_id_cannot_exist_is_closed_and_the_others_still_checked(
    dev_env: WorkflowEnvironment,
) -> None:
    """The real server refuses to describe a run by an id that is no UUID (INVALID_ARGUMENT);
    that one entry used to fail the whole check, so no dead holder was ever reclaimed while it
    held a lease. It is now closed, a run that no longer exists too, and a running one is not."""
    client = dev_env.client
    alive = await client.start_workflow("nothing-polls-this", id=f"recovery:alive-{uuid.uuid4()}",
                                        task_queue=f"q-{uuid.uuid4()}")
    gone = (f"recovery:gone-{uuid.uuid4()}", str(uuid.uuid4()))
    bad = ("recovery:bad-run-id", "not-a-uuid")
    try:
        check = ClosedCheck(runs=[(alive.id, alive.result_run_id or ""), gone, bad])
        closed = await FleetActivities(client).find_closed_recoveries(check)
    finally:
        await alive.terminate("test over")
    assert sorted(closed.runs) == sorted([gone, bad])
