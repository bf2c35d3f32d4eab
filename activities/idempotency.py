"""Keys that make a side effect happen once per workflow step, however often it is retried.

`action_spec` and `perform_once` hold the opening every actuator shares (the kind check, the
dry-run short-circuit, the ledger record and the recorded result of a finished step), so that
safety logic is written once rather than in each activity.

Every ledger call an activity makes goes through `off_loop`: the ledger is synchronous and can
wait for another process's write lock, which on the worker's event loop would freeze every other
activity and the worker's heartbeats meanwhile.

Each call waits for that lock only until a deadline inside its attempt's start-to-close timeout
(LEDGER_WAIT_SECONDS for opening a step and recording progress; the rest of the attempt for
recording the result of a side effect that already happened), so a lock still held when it
passes ends the call with the retryable `LedgerBusy` before the attempt could time out with its
outcome unknown.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating, uninterrupted
from models.actions import ActionRequest, ActionResult
from models.base import MedkitModel
from store.ledger import SQLITE_BUSY_TIMEOUT_MS, ActionLedger, ActionRecord, LedgerBusy, is_lock_timeout

SpecT = TypeVar("SpecT", bound=MedkitModel)
P = ParamSpec("P")
T = TypeVar("T")

LEDGER_WAIT = "waiting for the action ledger"
"""The heartbeat detail of a step whose ledger call waits (for another writer's lock)."""

LEDGER_BUSY = "LedgerBusy"
"""The error type of a ledger call that could not get the lock in time; it wrote nothing, and
the workflow's retry policies (ACTION_RETRY, NOTIFY_RETRY) retry it like any other failure."""

LEDGER_WAIT_SECONDS = 5.0
"""How long opening a step or recording its progress waits for the lock.

The shortest start-to-close timeout of a step that writes the ledger is the notify activity's
30 s (RecoveryWorkflow; an action gets its time budget + 30 s). An attempt makes up to two such
waits before its side effect (the notify step: open, then deliver within its route's timeout,
5-10 s by default; an action: open, then a few progress records), which leaves the side effect
its time; the 30 s default wait (SQLITE_BUSY_TIMEOUT_MS) alone outlived the notify attempt."""

ATTEMPT_MARGIN_SECONDS = 2.0
"""What every ledger wait leaves of its attempt's start-to-close timeout: time for the call's
thread to give up and the activity to report before the server times the attempt out."""


def attempt_ends() -> float:
    """When (time.monotonic()) the running attempt's ledger calls must have given up: its
    start-to-close timeout from now, less ATTEMPT_MARGIN_SECONDS. Called when the attempt starts.

    Measured on this worker's clock from the call, never from the server's started time, which
    another clock (or a time-skipping test server) makes meaningless here."""
    info = activity.info()
    timeout = info.start_to_close_timeout or info.schedule_to_close_timeout
    seconds = timeout.total_seconds() if timeout else SQLITE_BUSY_TIMEOUT_MS / 1000
    return time.monotonic() + max(seconds - ATTEMPT_MARGIN_SECONDS, 0.0)


def ledger_deadline(ends: float) -> float:
    """The deadline of a ledger call made before the side effect: LEDGER_WAIT_SECONDS from now,
    and never past the attempt's end `ends`."""
    return min(time.monotonic() + LEDGER_WAIT_SECONDS, ends)


LEDGER_THREADS = 4
"""Threads of the worker's ledger pool (`in_ledger_thread`).

Ledger calls may each wait for another process's write lock; in asyncio's default pool
(min(32, CPUs + 4) threads, 6 on two cores) a handful of them waiting took every thread, and the
work that pool also runs (the probes' checks, DNS lookups for HTTP probes and notifications,
email) queued behind the lock. In a pool of their own they hold up only each other. Within one
worker the ledger's own lock lets one call at a time at the database anyway, so a few threads are
enough; the calls queued for a thread still keep their deadlines (set when they are made)."""

_LEDGER_POOL = ThreadPoolExecutor(max_workers=LEDGER_THREADS, thread_name_prefix="medkit-ledger")


def in_ledger_thread(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
    """Run a blocking database call of the worker's ledger in the ledger's own thread pool (with
    the caller's context variables, as asyncio.to_thread passes them), never the default one."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(
        _LEDGER_POOL, functools.partial(context.run, call, *args, **kwargs))


async def _in_thread(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`call` in a ledger thread, heartbeating meanwhile and finished even if the step is cancelled."""
    return await uninterrupted(heartbeating(in_ledger_thread(call, *args, **kwargs), LEDGER_WAIT))


async def off_loop(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking ledger call in a thread, heartbeating while it waits, and let it finish
    even if the step is cancelled meanwhile (the cancellation is re-raised afterwards).

    In a thread, a call waiting for SQLite's write lock holds up only its own step, not the
    worker's event loop. Finishing it before the cancellation keeps what the call made on the
    loop guaranteed: a step's record says what it did before the step ends. A lock still held
    at the call's deadline fails it with the retryable LEDGER_BUSY error (nothing was written).
    """
    try:
        return await _in_thread(call, *args, **kwargs)
    except LedgerBusy as err:
        raise ApplicationError(str(err), type=LEDGER_BUSY) from None
    except Exception as err:
        if is_lock_timeout(err):  # a ledger read outside ActionLedger (scale's previous count)
            raise ApplicationError(f"the action ledger is busy: {err}", type=LEDGER_BUSY) from None
        raise


async def record_result(ledger: ActionLedger, key: str, result_json: str, ends: float) -> None:
    """Record the result of a side effect that has happened, waiting for the lock up to the
    attempt's end `ends`.

    A lock still held then is logged and the result returned unrecorded, never raised: a failed
    attempt would be retried, and its retry, finding no result, would act (or deliver) again.
    The attempt's own completion carries the result to the workflow, which retries no further."""
    try:
        await _in_thread(ledger.finish, key, result_json, deadline=ends)
    except LedgerBusy as err:
        structlog.get_logger("medkit.ledger").warning(
            "the result of a step that ran could not be recorded in the ledger", key=key,
            error=str(err))


def step_key() -> str:
    """The running activity's identity: workflow id, run id and activity id (stable across retries)."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"


async def begin_action(ledger: ActionLedger, request: ActionRequest, ends: float) -> ActionRecord:
    """Open (or reopen, on a retry) the ledger record of this action step."""
    return await off_loop(
        ledger.begin, step_key(), workflow_id=request.workflow_id, service=request.service,
        activity=activity.info().activity_type, deadline=ledger_deadline(ends),
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
    """One action step being performed: its ledger key, what earlier attempts recorded, and when
    (time.monotonic()) the attempt's ledger calls must have given up (`attempt_ends`)."""

    key: str
    progress: dict[str, Any]
    ledger: ActionLedger
    ends: float

    async def record(self, **values: Any) -> None:
        """Record how far this step got, for a retry to resume from (LedgerBusy if the lock stays
        held: the retry resumes from what was recorded before, as after a crash)."""
        await off_loop(self.ledger.progress, self.key, deadline=ledger_deadline(self.ends), **values)


async def perform_once(
    ledger: ActionLedger, request: ActionRequest, dry_run: Callable[[], DryRun],
    perform: Callable[[ActionStep], Awaitable[ActionResult]],
) -> ActionResult:
    """Run an action step at most once, however often its activity is retried.

    A dry run returns the simulated plan without touching the ledger or the target; a step the
    ledger has already finished returns its recorded result, marked replayed; otherwise `perform`
    runs and its result is recorded. An error from `perform` leaves the step open for a retry.
    Opening waits for the ledger's lock LEDGER_WAIT_SECONDS (then LedgerBusy, nothing done);
    recording the result, the rest of the attempt (`record_result`).
    """
    if request.dry_run:
        plan = dry_run()
        return ActionResult(action_name=request.action_name, kind=request.spec.kind, ok=True,
                            simulated=True, detail=f"dry-run: {plan.detail}", data=plan.data)
    ends = attempt_ends()
    record = await begin_action(ledger, request, ends)
    if (done := replayed_result(record)) is not None:
        return done
    result = await perform(ActionStep(record.key, json.loads(record.progress_json), ledger, ends))
    await record_result(ledger, record.key, result.model_dump_json(), ends)
    return result
