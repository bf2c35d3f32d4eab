"""Trip or reset a fleet's durable breaker entity from a recovery step, through the worker's client."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.deps import ActivityDeps
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from models.actions import ActionRequest, ActionResult, BreakerEntityAction
from models.breaker_entity import BreakerCommand, breaker_workflow_id
from workers.breaker_entities import BreakerEntityNotFound, command_entity


class BreakerEntityActivities:
    """Sends the entity's `command` update with the worker's own Temporal client.

    The update's id is the step's key, so a retried attempt gets the first attempt's answer
    instead of tripping again (which would restart the open time); the ledger keeps a finished
    step from sending it at all.
    """

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="command_breaker_entity")
    async def command_breaker_entity(self, request: ActionRequest) -> ActionResult:
        """Trip or reset `breaker:<name>`; the entity's new state and traffic fraction in `data`."""
        spec = action_spec(request, BreakerEntityAction)
        what = f"breaker entity {breaker_workflow_id(spec.name)}"

        def dry_run() -> DryRun:
            return DryRun(f"would {spec.command} the {what}")

        async def perform(step: ActionStep) -> ActionResult:
            command = BreakerCommand(action=spec.command,
                                     operator=f"medkit recovery {request.workflow_id}"[:200],
                                     reason=request.reason[:500] or f"{request.action_name} step")
            activity.heartbeat()
            try:
                status = await command_entity(
                    activity.client(), spec.name, command, update_id=step.key,
                    start_on_task_queue=activity.info().task_queue if spec.if_missing == "start" else None)
            except BreakerEntityNotFound as err:
                raise ApplicationError(f"{err} (if_missing: fail)", type="BreakerEntityNotFound",
                                       non_retryable=True) from None
            except WorkflowUpdateFailedError as err:
                raise ApplicationError(f"{what} refused {spec.command}: {err.cause}",
                                       type="BreakerEntityRefused", non_retryable=True) from None
            except RPCError as err:
                raise ApplicationError(f"{what}: Temporal error {err.status.name}: {err.message}",
                                       type="BreakerEntityUnavailable") from None
            return ActionResult(
                action_name=request.action_name, kind=spec.kind, ok=True,
                detail=f"{what} {spec.command}: now {status.state} "
                       f"({status.traffic_fraction:.0%} of traffic)",
                data={"state": status.state, "traffic_fraction": status.traffic_fraction},
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)
