"""FleetCoordinatorWorkflow: the one place that knows which services are being remediated.

An entity workflow granting leases: one recovery acts on a service at a time (others queue in
order), and when too much of the fleet is already in remediation a new recovery is held for a
human instead. A recovery that crashes or is terminated without releasing is found by a
periodic check and its lease reclaimed, so no slot is lost and nobody waits forever.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.fleet import (
        ClosedCheck,
        FleetState,
        LeaseDecision,
        LeaseRelease,
        LeaseRequest,
    )


MIN_TIMER = timedelta(milliseconds=1)
"""A check that is already due still waits on a timer, and a timer needs a positive duration."""

CHECK_WHEN_DUE_PATCH = "fleet-check-holders-when-due"
"""Marks runs that check the holders whenever the check is due when the coordinator wakes, even
if a request or release woke it rather than the timer, so a coordinator about to continue as
new checks first. Runs recorded before it checked only when the timer won."""


@workflow.defn
class FleetCoordinatorWorkflow:
    """Grants, queues or holds remediation leases; never blocks on any one recovery."""

    @workflow.init
    def __init__(self, state: FleetState) -> None:
        self._state = state
        self._outbox: list[tuple[LeaseRequest, LeaseDecision]] = []
        self._changed = False

    @workflow.run
    async def run(self, state: FleetState) -> None:
        """Deliver decisions, reclaim leases of dead recoveries, continue-as-new when long.

        The check of the holders runs every `reap_interval` while anyone holds or waits, on a
        schedule of its own: requests and releases arriving more often than that do not put it
        off, and neither does continuing as new (the state carries when it is due), so a
        crashed holder's lease is reclaimed within one interval however busy the fleet is."""
        state = self._state
        while True:
            self._changed = False
            if not self._busy():
                state.next_check = None
            elif state.next_check is None:
                state.next_check = workflow.now() + state.limits.reap_interval
            due = state.next_check
            try:
                await workflow.wait_condition(
                    lambda: self._changed or bool(self._outbox)
                    or workflow.info().is_continue_as_new_suggested(),
                    timeout=max(due - workflow.now(), MIN_TIMER) if due is not None else None,
                    timeout_summary="check that lease holders still run",
                )
            except TimeoutError:
                await self._check_holders()
            else:
                if (due is not None and workflow.now() >= due
                        and workflow.patched(CHECK_WHEN_DUE_PATCH)):
                    await self._check_holders()
            await self._deliver()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                await self._deliver()
                workflow.continue_as_new(self._state)

    def _busy(self) -> bool:
        return bool(self._state.holders or self._state.waiting)

    @workflow.update
    def request(self, request: LeaseRequest) -> LeaseDecision:
        """A recovery asks for its service's lease and is answered at once: granted, queued or
        held. A queued recovery is told again, by its `lease_decision` signal, when its turn
        comes. Asking again with the same request id gives the same answer."""
        self._state.limits = request.limits
        self._changed = True
        state = self._state
        holder = state.holders.get(request.service)
        if holder is not None and (holder.workflow_id, holder.run_id) == (request.workflow_id,
                                                                           request.run_id):
            return self._decision(request, "granted", "already held by this recovery")
        if holder is not None:
            queue = state.waiting.setdefault(request.service, [])
            if all(r.request_id != request.request_id for r in queue):
                queue.append(request)
            position = 1 + [r.request_id for r in queue].index(request.request_id)
            return self._decision(request, "queued", f"{holder.workflow_id} is acting on "
                                  f"{request.service}; queued at position {position}")
        over = self._over_limit()
        if over is not None:
            return self._decision(request, "held", over)
        state.holders[request.service] = request
        return self._decision(request, "granted", "lease granted")

    @workflow.signal
    def release(self, release: LeaseRelease) -> None:
        """A recovery is done acting; the next one queued for the service gets the lease."""
        self._release(release.service, release.workflow_id, release.run_id)
        self._changed = True

    @workflow.query
    def leases(self) -> FleetState:
        """Who holds which service and who is waiting."""
        return self._state

    def _over_limit(self) -> str | None:
        limits = self._state.limits
        active = len(self._state.holders)
        names = ", ".join(sorted(self._state.holders))
        if limits.max_services is not None and active + 1 > limits.max_services:
            return (f"blast radius: {active} services already in remediation ({names}); "
                    f"limit {limits.max_services}")
        if limits.max_percent is not None:
            percent = 100.0 * (active + 1) / limits.fleet_size
            if percent > limits.max_percent:
                return (f"blast radius: {active + 1} of {limits.fleet_size} services "
                        f"({percent:.0f}%) would be in remediation ({names}); limit "
                        f"{limits.max_percent:g}%")
        return None

    def _release(self, service: str, workflow_id: str, run_id: str) -> None:
        state = self._state
        holder = state.holders.get(service)
        if holder is None or (holder.workflow_id, holder.run_id) != (workflow_id, run_id):
            queue = state.waiting.get(service, [])
            state.waiting[service] = [r for r in queue
                                      if (r.workflow_id, r.run_id) != (workflow_id, run_id)]
            if not state.waiting[service]:
                del state.waiting[service]
            return
        del state.holders[service]
        queue = state.waiting.pop(service, [])
        if queue:
            following, *rest = queue
            state.holders[service] = following
            if rest:
                state.waiting[service] = rest
            self._grant_later(following, f"lease granted after {workflow_id} finished")

    def _decision(self, request: LeaseRequest, verdict: Literal["granted", "queued", "held"],
                  reason: str) -> LeaseDecision:
        return LeaseDecision(request_id=request.request_id, verdict=verdict, reason=reason,
                             active=sorted(self._state.holders))

    def _grant_later(self, request: LeaseRequest, reason: str) -> None:
        """Grant a lease to a queued recovery, delivered by signal from the main loop."""
        self._outbox.append((request, self._decision(request, "granted", reason)))

    async def _deliver(self) -> None:
        while self._outbox:
            request, decision = self._outbox.pop(0)
            handle = workflow.get_external_workflow_handle(request.workflow_id,
                                                           run_id=request.run_id)
            try:
                await handle.signal("lease_decision", decision)
            except Exception:  # the recovery is gone; its lease is reclaimed below
                self._release(request.service, request.workflow_id, request.run_id)

    async def _check_holders(self) -> None:
        """The check is done: the next one is scheduled afresh, then dead holders are released."""
        self._state.next_check = None
        await self._reclaim_dead_leases()

    async def _reclaim_dead_leases(self) -> None:
        state = self._state
        runs = {(r.workflow_id, r.run_id) for r in state.holders.values()}
        runs |= {(r.workflow_id, r.run_id) for q in state.waiting.values() for r in q}
        try:
            closed = await workflow.execute_activity(
                "find_closed_recoveries", ClosedCheck(runs=sorted(runs)),
                result_type=ClosedCheck, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=3),
                summary=f"check {len(runs)} lease holders are still running",
            )
        except ActivityError:
            return
        dead = set(closed.runs)
        for request in [r for r in state.holders.values() if (r.workflow_id, r.run_id) in dead]:
            self._release(request.service, request.workflow_id, request.run_id)
        for service in list(state.waiting):
            for request in list(state.waiting.get(service, [])):
                if (request.workflow_id, request.run_id) in dead:
                    self._release(service, request.workflow_id, request.run_id)
