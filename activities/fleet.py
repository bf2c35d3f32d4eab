"""Activities that talk to the fleet coordinator for a recovery, and check who is still running."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from models.fleet import (
    ClosedCheck,
    FleetState,
    LeaseDecision,
    LeaseRelease,
    LeaseRequest,
    coordinator_workflow_id,
)


class FleetActivities:
    """Lease requests (update-with-start of the coordinator), releases and the dead-holder check."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="request_fleet_lease")
    async def request_fleet_lease(self, request: LeaseRequest) -> LeaseDecision:
        """Ask the coordinator for a lease and return its answer, starting the coordinator if it
        does not run yet. One update-with-start call, so a granted lease costs the recovery no
        extra workflow task; the update id is the request id, so a retry gets the same answer."""
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "FleetCoordinatorWorkflow", FleetState(limits=request.limits),
            id=coordinator_workflow_id(request.task_queue), task_queue=request.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary="medkit fleet coordinator: per-service exclusivity and blast-radius cap",
        )
        decision: LeaseDecision = await self._client.execute_update_with_start_workflow(
            "request", request, start_workflow_operation=start, id=request.request_id,
            result_type=LeaseDecision,
        )
        return decision

    @activity.defn(name="release_fleet_lease")
    async def release_fleet_lease(self, release: LeaseRelease) -> None:
        """Hand the service's lease back. Releasing twice, or a lease the coordinator no longer
        knows, changes nothing; with no coordinator running there is nothing to release."""
        handle = self._client.get_workflow_handle(coordinator_workflow_id(release.task_queue))
        try:
            await handle.signal("release", release)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise

    @activity.defn(name="find_closed_recoveries")
    async def find_closed_recoveries(self, check: ClosedCheck) -> ClosedCheck:
        """The runs among `check.runs` that have ended (or never existed, or cannot)."""
        closed: list[tuple[str, str]] = []
        for workflow_id, run_id in check.runs:
            try:
                description = await self._client.get_workflow_handle(
                    workflow_id, run_id=run_id).describe()
            except RPCError as err:
                # INVALID_ARGUMENT: a run id that is no UUID names no run that can exist; one bad
                # entry must not stop the check of every other holder.
                if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                    raise
                closed.append((workflow_id, run_id))
                continue
            if description.status != WorkflowExecutionStatus.RUNNING:
                closed.append((workflow_id, run_id))
        return ClosedCheck(runs=closed)

    def activities(self) -> list[Callable[..., Any]]:
        """The fleet activities, for the worker to register."""
        return [self.request_fleet_lease, self.release_fleet_lease, self.find_closed_recoveries]
