"""Keys that make a side effect happen once per workflow step, however often it is retried."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.actions import ActionRequest, ActionResult
from store.ledger import ActionLedger, ActionRecord


def step_key() -> str:
    """The running activity's identity: workflow id, run id and activity id (stable across retries)."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"


def begin_action(ledger: ActionLedger, request: ActionRequest) -> ActionRecord:
    """Open (or reopen, on a retry) the ledger record of this action step."""
    return ledger.begin(
        step_key(), workflow_id=request.workflow_id, service=request.service,
        activity=activity.info().activity_type,
    )


def replayed_result(record: ActionRecord) -> ActionResult | None:
    """The recorded result of a step that already finished, marked as replayed."""
    if record.result_json is None:
        return None
    result = ActionResult.model_validate_json(record.result_json)
    return result.model_copy(update={"replayed": True})


def wrong_kind(request: ActionRequest, expected: str) -> ApplicationError:
    """The non-retryable error for an action routed to the wrong activity."""
    return ApplicationError(
        f"action {request.action_name!r} has kind {request.spec.kind!r}, not {expected!r}",
        type="WrongActionKind", non_retryable=True,
    )
