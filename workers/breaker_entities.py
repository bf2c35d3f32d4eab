"""Reading, reporting to and commanding a durable breaker entity (`breaker:<name>`).

Shared by the gateway's `/v1/breakers/...` routes and the `breaker_entity` recovery action, so
both find, create and command an entity the same way.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
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


async def command_entity(client: Client, name: str, command: BreakerCommand) -> BreakerEntityState:
    """Trip or reset the running entity through its `command` update; answers its new status
    (raises BreakerEntityNotFound)."""
    handle = client.get_workflow_handle_for(BreakerEntityWorkflow.run, breaker_workflow_id(name))
    try:
        return await handle.execute_update(BreakerEntityWorkflow.command, command)
    except RPCError as err:
        raise _not_found(err, name) or err from None
