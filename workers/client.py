"""Connecting to Temporal, and starting or joining a recovery as every detector does."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError, RPCStatusCode

from models import search_attributes as sa
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import (
    REPORTS_MEMO,
    Detection,
    RecoveryInput,
    ReportBatch,
    recovery_workflow_id,
)
from models.phases import DecisionKind
from models.policy import ServicePolicy
from models.status import ClosedByTemporal, RecoveryStatus
from workflows.recovery import RecoveryWorkflow

DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "medkit"
ANSWER_TIMEOUT_SECONDS = 30.0
"""How long a status query or a decision waits for a worker to answer before giving up: a
recovery no worker runs (worker down, another task queue) would otherwise keep it waiting
forever (an update) or about 30 s (a query, the server's own limit)."""

T = TypeVar("T")


@dataclass(frozen=True)
class TemporalTarget:
    """Where medkit's Temporal lives: address, namespace and the task queue its workers poll."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE

    @classmethod
    def from_env(cls, address: str | None = None, namespace: str | None = None,
                 task_queue: str | None = None) -> TemporalTarget:
        """Flags first, then TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / MEDKIT_TASK_QUEUE, then defaults."""
        return cls(
            address=address or os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_ADDRESS,
            namespace=namespace or os.environ.get("TEMPORAL_NAMESPACE") or DEFAULT_NAMESPACE,
            task_queue=task_queue or os.environ.get("MEDKIT_TASK_QUEUE") or DEFAULT_TASK_QUEUE,
        )


async def connect(target: TemporalTarget) -> Client:
    """A client with the pydantic converter; TLS and API key come from Temporal's env config."""
    profile = ClientConfigProfile.load()
    config = profile.to_client_connect_config()
    config["target_host"] = target.address
    config["namespace"] = target.namespace
    return await Client.connect(**config, data_converter=pydantic_data_converter)


def static_summary(detection: Detection, dry_run: bool) -> str:
    """The one line the Temporal UI shows for the recovery."""
    severity = detection.severity.value if detection.severity else "unassessed"
    mark = " [dry-run]" if dry_run else ""
    return f"{detection.service}: {detection.summary or 'problem reported'} ({severity}){mark}"


async def start_or_join_recovery(
    client: Client, detection: Detection, policy: ServicePolicy, task_queue: str,
    dry_run: bool = False,
) -> WorkflowHandle[RecoveryWorkflow, RecoveryStatus]:
    """Signal-with-start: a new recovery, or the running one for this service and key joins it."""
    return await _signal_with_start(client, detection, policy, task_queue, dry_run,
                                    "report", detection)


async def start_or_join_recovery_with(
    client: Client, batch: ReportBatch, policy: ServicePolicy, task_queue: str,
    dry_run: bool = False,
) -> WorkflowHandle[RecoveryWorkflow, RecoveryStatus]:
    """Signal-with-start carrying several detections of one recovery in one `report_batch`
    signal; the first detection starts the recovery if none is running."""
    return await _signal_with_start(client, batch.detections[0], policy, task_queue, dry_run,
                                    "report_batch", batch)


async def _signal_with_start(
    client: Client, detection: Detection, policy: ServicePolicy, task_queue: str, dry_run: bool,
    signal: str, signal_arg: Detection | ReportBatch,
) -> WorkflowHandle[RecoveryWorkflow, RecoveryStatus]:
    dry = dry_run or policy.dry_run
    handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus] = await client.start_workflow(
        RecoveryWorkflow.run,
        RecoveryInput(detection=detection, policy=policy, dry_run=dry_run),
        id=recovery_workflow_id(detection.service, detection.incident_key),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=signal,
        start_signal_args=[signal_arg],
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.SERVICE, detection.service)]),
        static_summary=static_summary(detection, dry),
        static_details=(
            f"Detected by **{detection.source}** at {detection.detected_at.isoformat()}\n\n"
            f"Incident key: `{detection.incident_key}` · labels: {detection.labels or '-'}"
        ),
    )
    return handle


async def repeats_of_ended_run(client: Client, workflow_id: str,
                               detection_ids: Collection[str]) -> set[str]:
    """Which of `detection_ids` the latest run of `workflow_id` counted, when that run has ended.

    A signal-with-start joins only a running recovery; after it has ended, a repeat of a report
    it counted (Alertmanager resending the same alert, an HA peer delivering late) would start a
    second recovery, which would act again on a problem already handled. The ended run keeps the
    ids in its memo (models.detection.REPORTS_MEMO); a run that is running, never existed, or
    ended without that memo (terminated, or recorded before it) gives the empty set."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return set()
        raise
    if description.status in (None, WorkflowExecutionStatus.RUNNING):
        return set()
    counted: list[str] = await description.memo_value(REPORTS_MEMO, default=[], type_hint=list[str])
    return set(detection_ids) & set(counted)


class RecoveryNotFound(LookupError):
    """No recovery has the given workflow id."""


class DecisionRejected(ValueError):
    """The recovery refused a decision (wrong phase, already ended); the message says why."""


class NoWorkerAnswered(RuntimeError):
    """No worker answered a status query or a decision in time; the message says which task
    queue it was sent to and whether any worker polls it."""


EXPLAIN_STEP_SECONDS = 5.0
"""How long each question asked to explain a silence (the recovery's task queue, its pollers)
may take."""


ENDED_OUTSIDE_MEDKIT: dict[WorkflowExecutionStatus, ClosedByTemporal] = {
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TIMED_OUT: "timed out",
    WorkflowExecutionStatus.FAILED: "failed",
}
"""How a recovery's run can end other than by its own code (which ends it Recovered, Resolved, ...)."""


async def ended_outside_medkit(handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                               timeout: float = EXPLAIN_STEP_SECONDS) -> ClosedByTemporal | None:
    """How the handle's run was ended in Temporal when not by its own code; None when it runs,
    ended by itself, does not exist, or Temporal does not say in `timeout` seconds (best effort:
    the status and refusals it explains are right without it, only less precise)."""
    with contextlib.suppress(RPCError, TimeoutError):
        description = await asyncio.wait_for(handle.describe(), timeout)
        return ENDED_OUTSIDE_MEDKIT.get(description.status) if description.status else None
    return None


async def workflow_pollers(client: Client, task_queue: str,
                           timeout: float = EXPLAIN_STEP_SECONDS) -> int | None:
    """How many workers poll `task_queue` for workflow tasks, or None when Temporal does not say
    in `timeout` seconds: a cheap, best-effort check for messages, never a gate."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    try:
        response = await asyncio.wait_for(
            client.workflow_service.describe_task_queue(request), timeout)
    except (RPCError, TimeoutError):
        return None
    return len(response.pollers)


async def _recovery_task_queue(handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus]) -> str | None:
    """The task queue the recovery runs on, or None when Temporal does not say in time."""
    with contextlib.suppress(RPCError, TimeoutError):
        description = await asyncio.wait_for(handle.describe(), EXPLAIN_STEP_SECONDS)
        return description.task_queue
    return None


class TemporalNotAnswering(RuntimeError):
    """Temporal itself did not answer a query or decision, nor then its health check: it is down
    or unreachable (from here), so nothing was confirmed and no worker is to blame."""


async def temporal_answers(client: Client, timeout: float = EXPLAIN_STEP_SECONDS) -> bool:
    """Whether Temporal answers its gRPC health check within `timeout` seconds."""
    try:
        return await asyncio.wait_for(
            client.service_client.check_health(timeout=timedelta(seconds=timeout)), timeout)
    except (RPCError, TimeoutError):
        return False


async def no_worker_answered(client: Client,
                             handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                             what: str, timeout: float) -> NoWorkerAnswered:
    """The error for a query or update no worker answered, naming the recovery's task queue and
    whether any worker polls it, so the operator knows to start one or fix --task-queue."""
    queue = await _recovery_task_queue(handle)
    if queue is None:
        return NoWorkerAnswered(f"{what}: no worker answered within {timeout:g}s (is `medkit "
                                "worker` running on the recovery's task queue?)")
    pollers = await workflow_pollers(client, queue)
    where = f"{what}: no worker answered within {timeout:g}s on task queue {queue!r}"
    if pollers == 0:
        return NoWorkerAnswered(f"{where} (no worker polls it: is `medkit worker` running with "
                                "that --task-queue?)")
    return NoWorkerAnswered(f"{where} (workers poll it: are they overloaded or stuck?)")


async def unanswered(client: Client, handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                     what: str, timeout: float) -> NoWorkerAnswered | TemporalNotAnswering:
    """The error for a query or update that got no answer in `timeout` seconds.

    A Temporal that stopped answering after the client connected looks the same from here as a
    worker that does not answer; the worker's message (and for a decision "Temporal keeps it
    pending") would then be false and send the operator to the wrong component. So Temporal's
    own health check decides which one it is, before asking Temporal about the task queue."""
    if await temporal_answers(client, min(timeout, EXPLAIN_STEP_SECONDS)):
        return await no_worker_answered(client, handle, what, timeout)
    return TemporalNotAnswering(
        f"{what}: Temporal at {client.service_client.config.target_host} does not answer (it is "
        "down or unreachable; this is not about a worker), so nothing was confirmed")


async def within(work: Awaitable[T], timeout: float) -> T:
    """`work`, or TimeoutError when it has not finished in `timeout` seconds; a cancellation from
    outside (Ctrl-C, a client gone) stays a cancellation. The one deadline every query, update
    and gateway call runs under.

    The SDK turns the cancellation of an update into RPCTimeoutOrCancelledError, so the deadline
    is an asyncio.timeout in this task (an inner task, as wait_for makes, would leave that error
    unretrieved when cancelled from outside) and the two are told apart by whether a
    cancellation is still pending once the deadline's own has been withdrawn."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except (TimeoutError, RPCTimeoutOrCancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling() > 0:
            raise asyncio.CancelledError() from None
        raise TimeoutError(f"no answer within {timeout:g}s") from None


async def _answered(client: Client, work: Awaitable[T],
                    handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                    what: str, timeout: float) -> T:
    """`work` (a query or an update); NoWorkerAnswered when no worker answers in `timeout`
    seconds (our deadline or the server's own query limit), TemporalNotAnswering when Temporal
    itself does not."""
    try:
        return await within(work, timeout)
    except TimeoutError:
        raise await unanswered(client, handle, what, timeout) from None
    except RPCError as err:
        if err.status != RPCStatusCode.DEADLINE_EXCEEDED:  # the server's own query limit
            raise
        raise await unanswered(client, handle, what, timeout) from None


async def fetch_status(client: Client, workflow_id: str, run_id: str | None = None,
                       timeout: float = ANSWER_TIMEOUT_SECONDS) -> RecoveryStatus:
    """The status query of a recovery, running or ended: its latest run, or the given one;
    NoWorkerAnswered when no worker answers it within `timeout` seconds (TemporalNotAnswering
    when Temporal itself does not)."""
    handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id, run_id=run_id)
    try:
        status = await _answered(client, handle.query(RecoveryWorkflow.status), handle,
                                 "status query", timeout)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            which = f" and run id {run_id!r}" if run_id else ""
            raise RecoveryNotFound(f"no recovery with id {workflow_id!r}{which}") from None
        how = await ended_outside_medkit(handle)
        if how is None:
            raise
        raise RecoveryNotFound(
            f"recovery {workflow_id!r} was {how} in Temporal before any worker ran it, so it has "
            "no status (the Temporal UI shows its history)") from None
    return await _as_shown(handle, status)


async def _as_shown(handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                    status: RecoveryStatus) -> RecoveryStatus:
    """The status as the operator should see it. The query answers with the run's last state,
    so a run ended in Temporal (terminated in its UI, say) would look open: its last phase, no
    outcome, a decision pending. Such a run says how it was ended instead, with no decision
    pending, since it takes none. A run with an outcome ended by itself: no need to ask."""
    if status.outcome is not None:
        return status
    how = await ended_outside_medkit(handle)
    if how is None:
        return status
    return status.model_copy(update={"closed_by_temporal": how, "pending_decision": None})


ACCEPTED_STATUS_SECONDS = 5.0
"""How long the status query may take that describes a decision accepted but not yet taken."""

PENDING_DECISION_NOTE = (
    "the {kind} is not applied yet, but Temporal keeps it pending, and a worker that picks up "
    "the recovery later may still apply it (`medkit status` shows whether it did)")
"""What becomes of a decision no worker answered: the server has admitted the update and
delivers it with the recovery's next workflow task, to whichever worker starts first (checked
against the dev server: an update whose caller gave up after 3 s was applied by a worker
started a minute later); it is lost only if the server drops its in-memory update registry."""


async def _accepted_not_yet_taken(client: Client, workflow_id: str, run_id: str | None,
                                  kind: DecisionKind, timeout: float) -> DecisionVerdict:
    """The verdict for a decision the recovery accepted but has not finished taking within
    `timeout` (an abort waits for the step under way, say a page being retried): accepted, in
    the phase the recovery is in now, saying so, rather than "no worker answered"."""
    try:
        status = await fetch_status(client, workflow_id, run_id,
                                    min(timeout, ACCEPTED_STATUS_SECONDS))
    except NoWorkerAnswered:
        raise NoWorkerAnswered(
            f"{kind.value} accepted by the recovery, which had not finished taking it after "
            f"{timeout:g}s (`medkit status {workflow_id}` shows when it has)") from None
    except TemporalNotAnswering:
        raise TemporalNotAnswering(
            f"{kind.value} accepted by the recovery, which had not finished taking it after "
            f"{timeout:g}s; then Temporal at {client.service_client.config.target_host} stopped "
            f"answering (`medkit status {workflow_id}` shows what became of it once it is back)"
        ) from None
    return DecisionVerdict(
        decision=kind, accepted=True, phase=status.phase,
        message=f"{kind.value} accepted; the recovery, now {status.phase.value}, takes it when "
                f"its current step ends, which had not happened after {timeout:g}s "
                f"(`medkit status {workflow_id}` shows when it has)")


async def send_decision(
    client: Client, workflow_id: str, kind: DecisionKind, decision: OperatorDecision,
    run_id: str | None = None, timeout: float = ANSWER_TIMEOUT_SECONDS,
) -> DecisionVerdict:
    """Send a decision as an update (to the latest run, or the given one); the verdict, or
    DecisionRejected saying why not, or NoWorkerAnswered when no worker accepted it within
    `timeout` seconds (TemporalNotAnswering when Temporal itself did not answer: then it may
    never have reached Temporal, so no note says it is pending). Accepted but not taken by
    then, it is an accepted verdict saying so."""
    handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id, run_id=run_id)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        update = await _answered(
            client,
            handle.start_update(kind.value, decision, wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                                result_type=DecisionVerdict),
            handle, kind.value, timeout)
        try:
            verdict: DecisionVerdict | None = await within(
                update.result(), max(deadline - asyncio.get_running_loop().time(), 0.001))
        except TimeoutError:
            verdict = None  # accepted, not taken yet: described below, outside these handlers
    except NoWorkerAnswered as err:
        raise NoWorkerAnswered(f"{err}; {PENDING_DECISION_NOTE.format(kind=kind.value)}") from None
    except WorkflowUpdateFailedError as err:
        message = getattr(err.cause, "message", None) or str(err.cause)
        raise DecisionRejected(f"{kind.value} rejected: {message}") from None
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise await _refusal_of_ended(client, handle, kind, timeout) from None
    return verdict or await _accepted_not_yet_taken(client, workflow_id, run_id, kind, timeout)


async def _refusal_of_ended(client: Client, handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus],
                            kind: DecisionKind, timeout: float) -> DecisionRejected:
    """Why a decision sent to an ended run is refused: how it was ended in Temporal when not by
    its own code (its last phase is no end, and it may never have run), else the phase it ended
    in; RecoveryNotFound when there is no such recovery."""
    how = await ended_outside_medkit(handle)
    if how is not None:
        return DecisionRejected(f"{kind.value} rejected: the recovery was {how} in Temporal (not "
                                "ended by medkit), so it takes no more decisions")
    ended = await fetch_status(client, handle.id, handle.run_id, timeout)
    return DecisionRejected(f"{kind.value} rejected: cannot {kind.value}: the recovery already "
                            f"ended as {ended.phase.value}")
