"""The fleet coordinator's bookkeeping of holders and queues, one rule per test: a request seen
again, a queued recovery that gives up, a turn passed on, a grant to a recovery that is gone,
and a dead recovery found waiting by the check of the holders.

The recoveries here are stand-ins: workflows started on a task queue no worker polls, so they
run (the check of the holders finds them running, and a signal to them is accepted) and do
nothing; a recovery that is gone is a workflow id and run id that never ran. The coordinator
itself runs on a real dev server with a real medkit worker, its requests and releases sent
through the fleet activities the recoveries use.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.fleet import FleetActivities
from models.fleet import (
    ClosedCheck,
    FleetSpec,
    FleetState,
    LeaseRelease,
    LeaseRequest,
    coordinator_workflow_id,
)
from tests.conftest import eventually, policy_file, running
from tests.scripted import scripted_policy
from workers.worker import build_worker
from workflows.fleet import FleetCoordinatorWorkflow

SERVICE = "checkout"


class Fleet:
    """A coordinator on the test's queue, and stand-in recoveries that ask it for leases."""

    def __init__(self, client: Client, queue: str, limits: FleetSpec) -> None:
        self.client = client
        self.queue = queue
        self.limits = limits
        self.activities = FleetActivities(client)
        self.coordinator = client.get_workflow_handle_for(FleetCoordinatorWorkflow.run,
                                                          coordinator_workflow_id(queue))
        self._idle_queue = f"nobody-polls-{uuid.uuid4()}"
        self._alive: list[WorkflowHandle[Any, Any]] = []
        self.alive_ids: set[str] = set()

    async def alive(self, name: str) -> LeaseRequest:
        """The lease request of a recovery that runs (and never does anything)."""
        handle = await self.client.start_workflow(
            "nothing-polls-this", id=f"recovery:{name}-{uuid.uuid4()}", task_queue=self._idle_queue)
        self._alive.append(handle)
        self.alive_ids.add(handle.id)
        return self._request(name, handle.id, handle.result_run_id or "")

    def gone(self, name: str) -> LeaseRequest:
        """The lease request of a recovery that has ended: no run of that id exists."""
        return self._request(name, f"recovery:{name}-gone-{uuid.uuid4()}", str(uuid.uuid4()))

    def _request(self, name: str, workflow_id: str, run_id: str) -> LeaseRequest:
        return LeaseRequest(request_id=f"{name}-{uuid.uuid4()}", service=SERVICE,
                            workflow_id=workflow_id, run_id=run_id, task_queue=self.queue,
                            limits=self.limits)

    async def release(self, request: LeaseRequest) -> None:
        """What a recovery sends when it ends: give back the lease or the place in the queue."""
        await self.activities.release_fleet_lease(LeaseRelease(
            service=request.service, workflow_id=request.workflow_id, run_id=request.run_id,
            task_queue=request.task_queue))

    async def state(self) -> FleetState:
        """The coordinator's holders and queues."""
        return await self.coordinator.query(FleetCoordinatorWorkflow.leases)

    async def settles_on(self, holder: LeaseRequest | None, waiting: Sequence[LeaseRequest],
                         timeout: float = 20.0) -> FleetState:
        """Wait until the coordinator has applied what was sent (a release is a signal, applied
        in a task of its own) and shows `holder` holding the service and `waiting` queued for it,
        in that order; fail with the last state seen when it never does."""
        last: list[FleetState] = []

        async def shows_it() -> FleetState | None:
            state = await self.state()
            last[:] = [state]
            return state if _holders_and_queue(state) == _expected(holder, waiting) else None

        try:
            return await eventually(shows_it, timeout=timeout)
        except AssertionError as err:
            seen = _holders_and_queue(last[0]) if last else None
            raise AssertionError(f"expected {_expected(holder, waiting)}, last saw {seen}") from err

    async def stop(self) -> None:
        """End the stand-in recoveries."""
        for handle in self._alive:
            await handle.terminate("test over")


Shape = tuple[str | None, list[str]]


def _holders_and_queue(state: FleetState) -> Shape:
    holder = state.holders.get(SERVICE)
    return (holder.request_id if holder else None,
            [r.request_id for r in state.waiting.get(SERVICE, [])])


def _expected(holder: LeaseRequest | None, waiting: Sequence[LeaseRequest]) -> Shape:
    return (holder.request_id if holder else None, [r.request_id for r in waiting])


def fleet_on(env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
             limits: FleetSpec | None = None, check: Callable[..., Any] | None = None,
             ) -> Callable[[], AbstractAsyncContextManager[Fleet]]:
    """A medkit worker on `queue` (which runs the coordinator) for the block's duration; with
    `check`, a worker of the coordinator alone, `check` standing in for the real
    `find_closed_recoveries`."""

    @asynccontextmanager
    async def block() -> AsyncIterator[Fleet]:
        fleet = Fleet(env.client, queue, limits or FleetSpec())
        policies = policy_file(scripted_policy("http://127.0.0.1:9/hook"))  # no recovery runs
        worker = (build_worker(env.client, queue, deps, policies) if check is None else
                  Worker(env.client, task_queue=queue, workflows=[FleetCoordinatorWorkflow],
                         activities=[check]))
        try:
            async with running(worker):
                yield fleet
        finally:
            await fleet.stop()

    return block


async def granted_by_signal(fleet: Fleet, *recipients: LeaseRequest) -> None:
    """Wait until the coordinator has signalled `lease_decision` to exactly `recipients`, in
    that order, and every one of them that runs has received it (a signal to another workflow
    is delivered after the coordinator's task that sends it)."""
    expected = [r.workflow_id for r in recipients]
    last: list[list[str]] = []

    async def all_sent_and_received() -> bool:
        history = await fleet.coordinator.fetch_history()
        sent = [e.signal_external_workflow_execution_initiated_event_attributes for e in history.events
                if e.HasField("signal_external_workflow_execution_initiated_event_attributes")]
        last[:] = [[a.workflow_execution.workflow_id for a in sent if a.signal_name == "lease_decision"]]
        if last[0] != expected:
            return False
        for request in recipients:
            if request.workflow_id in fleet.alive_ids and "lease_decision" not in await _signals(
                    fleet.client, request.workflow_id):
                return False
        return True

    try:
        await eventually(all_sent_and_received)
    except AssertionError as err:
        raise AssertionError(f"expected grants to {expected}, saw {last}") from err


async def _signals(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events
            if e.HasField("workflow_execution_signaled_event_attributes")]


async def test_a_holder_asking_again_under_a_new_request_is_granted_without_a_second_slot(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """A recovery that already holds its service's lease and asks again (its earlier request
    failed on its side after the coordinator had applied it, so it asks anew under another
    request id) is granted at once: neither queued behind itself, nor held by a blast-radius cap
    that its own lease fills."""
    async with fleet_on(dev_env, queue, deps, FleetSpec(max_services=1))() as fleet:
        first = await fleet.alive("first")
        assert (await fleet.activities.request_fleet_lease(first)).verdict == "granted"
        again = first.model_copy(update={"request_id": f"again-{uuid.uuid4()}"})
        decision = await fleet.activities.request_fleet_lease(again)
        state = await fleet.settles_on(first, [])
    assert (decision.verdict, decision.reason) == ("granted", "already held by this recovery")
    assert decision.active == [SERVICE]
    assert list(state.holders) == [SERVICE]


async def test_a_queued_request_seen_again_keeps_its_place_and_is_not_queued_twice(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """The same queued request reaching the coordinator again under another update id (the
    server recognises an update id only within one run of the coordinator, and the coordinator
    continues as new) is answered with its place in the queue, and takes no second place: a
    duplicate would be granted the lease again after its recovery had given it back."""
    async with fleet_on(dev_env, queue, deps)() as fleet:
        holder, second, third = [await fleet.alive(n) for n in ("holder", "second", "third")]
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        for request in (second, third):
            assert (await fleet.activities.request_fleet_lease(request)).verdict == "queued"
        again = await fleet.coordinator.execute_update(
            FleetCoordinatorWorkflow.request, second, id=f"{second.request_id}-after-can")
        await fleet.settles_on(holder, [second, third])
    assert again.verdict == "queued"
    assert again.reason == f"{holder.workflow_id} is acting on {SERVICE}; queued at position 1"


async def test_a_queued_recovery_that_gives_up_leaves_the_queue_and_the_rest_keep_waiting(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """A release from a recovery that only waits (aborted while queued) takes it out of the
    queue and nothing else: the holder keeps the lease, those behind it keep waiting, and when
    the holder is done the lease goes to the next one still waiting, not to the one that left."""
    async with fleet_on(dev_env, queue, deps)() as fleet:
        holder, quitter, patient = [await fleet.alive(n) for n in ("holder", "quitter", "patient")]
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        for request in (quitter, patient):
            assert (await fleet.activities.request_fleet_lease(request)).verdict == "queued"
        await fleet.release(quitter)
        await fleet.settles_on(holder, [patient])
        await fleet.release(holder)
        await fleet.settles_on(patient, [])
        await granted_by_signal(fleet, patient)


async def test_a_released_lease_goes_to_the_first_in_line_and_the_others_keep_their_places(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """When the holder is done, the first queued recovery holds the lease and is told so by
    signal, and every one behind it stays queued, in order: none is dropped with the turn."""
    async with fleet_on(dev_env, queue, deps)() as fleet:
        holder, second, third, fourth = [await fleet.alive(n)
                                         for n in ("holder", "second", "third", "fourth")]
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        for request in (second, third, fourth):
            assert (await fleet.activities.request_fleet_lease(request)).verdict == "queued"
        await fleet.release(holder)
        await fleet.settles_on(second, [third, fourth])
        await granted_by_signal(fleet, second)


async def test_a_lease_granted_to_a_recovery_that_is_gone_passes_to_the_next_in_line(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """The recovery whose turn comes has ended without releasing (crashed, terminated): the
    signal granting it the lease fails, and the coordinator reclaims that lease at once and
    passes it on, instead of leaving the service leased to nobody until the next check of
    the holders (the reap interval is left at its minute, so no check runs meanwhile)."""
    async with fleet_on(dev_env, queue, deps)() as fleet:
        holder, patient = await fleet.alive("holder"), await fleet.alive("patient")
        crashed = fleet.gone("crashed")
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        for request in (crashed, patient):
            assert (await fleet.activities.request_fleet_lease(request)).verdict == "queued"
        await fleet.release(holder)
        await fleet.settles_on(patient, [])
        await granted_by_signal(fleet, crashed, patient)


async def test_a_lease_granted_to_the_last_one_waiting_when_it_is_gone_frees_the_service(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """With nobody behind the recovery that is gone, the reclaimed lease frees the service: the
    next recovery of it is granted at once rather than queued behind a recovery that has ended."""
    async with fleet_on(dev_env, queue, deps)() as fleet:
        holder, later = await fleet.alive("holder"), await fleet.alive("later")
        crashed = fleet.gone("crashed")
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        assert (await fleet.activities.request_fleet_lease(crashed)).verdict == "queued"
        await fleet.release(holder)
        await fleet.settles_on(None, [])
        await granted_by_signal(fleet, crashed)
        decision = await fleet.activities.request_fleet_lease(later)
    assert (decision.verdict, decision.reason) == ("granted", "lease granted")


async def test_the_check_of_the_holders_drops_a_dead_recovery_from_the_queue(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """A queued recovery that has ended without releasing is taken out of the queue by the
    periodic check of the holders, while the holder, alive, keeps its lease and the live
    recovery behind the dead one keeps waiting and moves up: a dead entry must not be handed
    the lease, nor make the live ones wait behind it."""
    reap_interval = timedelta(seconds=1)
    async with fleet_on(dev_env, queue, deps, FleetSpec(reap_interval=reap_interval))() as fleet:
        holder, patient = await fleet.alive("holder"), await fleet.alive("patient")
        crashed = fleet.gone("crashed")
        assert (await fleet.activities.request_fleet_lease(holder)).verdict == "granted"
        for request in (crashed, patient):
            assert (await fleet.activities.request_fleet_lease(request)).verdict == "queued"
        await fleet.settles_on(holder, [patient])
        await granted_by_signal(fleet)
        again = await fleet.coordinator.execute_update(
            FleetCoordinatorWorkflow.request, patient, id=f"{patient.request_id}-asks-its-place")
    assert again.reason == f"{holder.workflow_id} is acting on {SERVICE}; queued at position 1"


class CheckThatFailsAtFirst:
    """`find_closed_recoveries` failing its first `failures` attempts (the server cannot be
    asked, say), then answering as the real one does."""

    def __init__(self, client: Client, failures: int) -> None:
        self._real = FleetActivities(client)
        self.failures = failures
        self.calls = 0

    @activity.defn(name="find_closed_recoveries")
    async def find_closed_recoveries(self, check: ClosedCheck) -> ClosedCheck:
        """Fail while failures are left, then ask the server."""
        self.calls += 1
        if self.calls <= self.failures:
            raise ApplicationError(f"check {self.calls} refused by the test")
        return await self._real.find_closed_recoveries(check)


async def test_a_check_of_the_holders_that_fails_is_tried_again_and_the_coordinator_lives_on(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """A check whose activity fails all its attempts is given up, not raised: raised, it would
    fail the coordinator, and with it every lease and queue of the fleet. The coordinator keeps
    its state and checks again one reap interval later, when the crashed holder's lease is
    reclaimed and passed to the recovery waiting for it."""
    check = CheckThatFailsAtFirst(dev_env.client, failures=3)  # the check's maximum_attempts
    limits = FleetSpec(reap_interval=timedelta(seconds=1))
    async with fleet_on(dev_env, queue, deps, limits, check=check.find_closed_recoveries)() as fleet:
        crashed, patient = fleet.gone("crashed"), await fleet.alive("patient")
        assert (await fleet.activities.request_fleet_lease(crashed)).verdict == "granted"
        assert (await fleet.activities.request_fleet_lease(patient)).verdict == "queued"
        await fleet.settles_on(patient, [], timeout=60)
        await granted_by_signal(fleet, patient)
        description = await fleet.coordinator.describe()
    assert check.calls > check.failures
    assert description.status == WorkflowExecutionStatus.RUNNING
