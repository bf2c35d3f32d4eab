"""Keys that make a side effect happen once per workflow step, however often it is retried.

`action_spec` and `perform_once` hold the opening every actuator shares (the kind check, the
dry-run short-circuit, the ledger record and the recorded result of a finished step), so that
safety logic is written once rather than in each activity.

Every ledger call an activity makes goes through `off_loop`: the ledger is synchronous and can
wait up to SQLite's busy timeout for another process's write lock, which on the worker's event
loop would freeze every other activity and the worker's heartbeats meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating, uninterrupted
from models.actions import ActionRequest, ActionResult
from models.base import MedkitModel
from store.ledger import ActionLedger, ActionRecord

SpecT = TypeVar("SpecT", bound=MedkitModel)
P = ParamSpec("P")
T = TypeVar("T")

LEDGER_WAIT = "waiting for the action ledger"
"""The heartbeat detail of a step whose ledger call waits (for another writer's lock)."""


async def off_loop(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking ledger call in a thread, heartbeating while it waits, and let it finish
    even if the step is cancelled meanwhile (the cancellation is re-raised afterwards).

    In a thread, a call waiting for SQLite's write lock holds up only its own step, not the
    worker's event loop. Finishing it before the cancellation keeps what the call made on the
    loop guaranteed: a step's record says what it did before the step ends.
    """
    return await uninterrupted(heartbeating(asyncio.to_thread(call, *args, **kwargs), LEDGER_WAIT))


def step_key() -> str:
    """The running activity's identity: workflow id, run id and activity id (stable across retries)."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"


async def begin_action(ledger: ActionLedger, request: ActionRequest) -> ActionRecord:
    """Open (or reopen, on a retry) the ledger record of this action step."""
    return await off_loop(
        ledger.begin, step_key(), workflow_id=request.workflow_id, service=request.service,
        activity=activity.info().activity_type,
    )


def replayed_result(record: ActionRecord) -> ActionResult | None:
    """The recorded result of a step that already finished, marked as replayed."""
    if record.result_json is None:
        return None
    result = ActionResult.model_validate_json(record.result_json)
    return result.model_copy(update={"replayed": True})


def action_spec(request: ActionRequest, spec_type: type[SpecT]) -> SpecT:
    """The request's spec as the activity's own kind; any other kind was routed to the wrong
    activity, which no retry can fix, so it fails non-retryably."""
    spec = request.spec
    if not isinstance(spec, spec_type):
        expected = spec_type.model_fields["kind"].default
        raise ApplicationError(
            f"action {request.action_name!r} has kind {spec.kind!r}, not {expected!r}",
            type="WrongActionKind", non_retryable=True,
        )
    return spec


@dataclass(frozen=True)
class DryRun:
    """What a dry run reports it would do (`detail`, which the result prefixes with "dry-run: "),
    and any data for the result."""

    detail: str
    data: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ActionStep:
    """One action step being performed: its ledger key and what earlier attempts recorded."""

    key: str
    progress: dict[str, Any]
    ledger: ActionLedger

    async def record(self, **values: Any) -> None:
        """Record how far this step got, for a retry to resume from."""
        await off_loop(self.ledger.progress, self.key, **values)


async def perform_once(
    ledger: ActionLedger, request: ActionRequest, dry_run: Callable[[], DryRun],
    perform: Callable[[ActionStep], Awaitable[ActionResult]],
) -> ActionResult:
    """Run an action step at most once, however often its activity is retried.

    A dry run returns the simulated plan without touching the ledger or the target; a step the
    ledger has already finished returns its recorded result, marked replayed; otherwise `perform`
    runs and its result is recorded. An error from `perform` leaves the step open for a retry.
    """
    if request.dry_run:
        plan = dry_run()
        return ActionResult(action_name=request.action_name, kind=request.spec.kind, ok=True,
                            simulated=True, detail=f"dry-run: {plan.detail}", data=plan.data)
    record = await begin_action(ledger, request)
    if (done := replayed_result(record)) is not None:
        return done
    result = await perform(ActionStep(record.key, json.loads(record.progress_json), ledger))
    await off_loop(ledger.finish, record.key, result.model_dump_json())
    return result
