"""Reading, reporting to and commanding a durable breaker entity (`breaker:<name>`).

Shared by the gateway's `/v1/breakers/...` routes and the `breaker_entity` recovery action, so
both find, create and command an entity the same way.
"""

from __future__ import annotations

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from models.breaker_entity import (
    BreakerCommand,
    BreakerEntitySettings,
    BreakerEntityState,
    OutcomeReport,
    breaker_workflow_id,
)
from workflows.breaker import BreakerEntityWorkflow


class BreakerEntityNotFound(LookupError):
    """No breaker entity of that name is running (or has ever run)."""


def _not_found(err: RPCError, name: str) -> BreakerEntityNotFound | None:
    if err.status == RPCStatusCode.NOT_FOUND:
        return BreakerEntityNotFound(f"no breaker entity named {name!r} is running")
    return None


async def entity_status(client: Client, name: str) -> BreakerEntityState:
    """The entity's `status` query (raises BreakerEntityNotFound)."""
    handle = client.get_workflow_handle_for(BreakerEntityWorkflow.run, breaker_workflow_id(name))
    try:
        return await handle.query(BreakerEntityWorkflow.status)
    except RPCError as err:
        raise _not_found(err, name) or err from None


async def report_outcome(client: Client, name: str, report: OutcomeReport,
                         task_queue: str) -> WorkflowHandle[BreakerEntityWorkflow, None]:
    """Signal-with-start one outcome: the running entity counts it, or a new entity with the
    default settings is started with it."""
    return await client.start_workflow(
        BreakerEntityWorkflow.run,
        BreakerEntityState(settings=BreakerEntitySettings(name=name)),
        id=breaker_workflow_id(name),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="report",
        start_signal_args=[report],
    )


async def command_entity(client: Client, name: str, command: BreakerCommand, *,
                         update_id: str | None = None,
                         start_on_task_queue: str | None = None) -> BreakerEntityState:
    """Trip or reset the entity through its `command` update; answers its new status. A retry
    with the same `update_id` is answered, not applied twice. With `start_on_task_queue`, an
    entity that is not running is started there (default settings) with the update; without
    it, a missing entity raises BreakerEntityNotFound."""
    workflow_id = breaker_workflow_id(name)
    if start_on_task_queue is not None:
        start = WithStartWorkflowOperation(
            BreakerEntityWorkflow.run, BreakerEntityState(settings=BreakerEntitySettings(name=name)),
            id=workflow_id, task_queue=start_on_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        return await client.execute_update_with_start_workflow(
            BreakerEntityWorkflow.command, command, start_workflow_operation=start, id=update_id)
    handle = client.get_workflow_handle_for(BreakerEntityWorkflow.run, workflow_id)
    try:
        return await handle.execute_update(BreakerEntityWorkflow.command, command, id=update_id)
    except RPCError as err:
        raise _not_found(err, name) or err from None
