"""Connecting to Temporal, and starting or joining a recovery as every detector does."""

from __future__ import annotations

import os
from dataclasses import dataclass

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError, RPCStatusCode

from models import search_attributes as sa
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import Detection, RecoveryInput, ReportBatch, recovery_workflow_id
from models.phases import DecisionKind
from models.policy import ServicePolicy
from models.status import RecoveryStatus
from workflows.recovery import RecoveryWorkflow

DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "medkit"


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


class RecoveryNotFound(LookupError):
    """No recovery has the given workflow id."""


class DecisionRejected(ValueError):
    """The recovery refused a decision (wrong phase, already ended); the message says why."""


async def fetch_status(client: Client, workflow_id: str, run_id: str | None = None) -> RecoveryStatus:
    """The status query of a recovery, running or ended: its latest run, or the given one."""
    handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id, run_id=run_id)
    try:
        return await handle.query(RecoveryWorkflow.status)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            which = f" and run id {run_id!r}" if run_id else ""
            raise RecoveryNotFound(f"no recovery with id {workflow_id!r}{which}") from None
        raise


async def send_decision(
    client: Client, workflow_id: str, kind: DecisionKind, decision: OperatorDecision,
    run_id: str | None = None,
) -> DecisionVerdict:
    """Send a decision as an update (to the latest run, or the given one); the verdict, or
    DecisionRejected saying why not."""
    handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id, run_id=run_id)
    try:
        verdict: DecisionVerdict = await handle.execute_update(
            kind.value, decision, result_type=DecisionVerdict
        )
    except WorkflowUpdateFailedError as err:
        message = getattr(err.cause, "message", None) or str(err.cause)
        raise DecisionRejected(f"{kind.value} rejected: {message}") from None
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        ended = await fetch_status(client, workflow_id, run_id)  # RecoveryNotFound if none
        raise DecisionRejected(
            f"{kind.value} rejected: cannot {kind.value}: the recovery already ended as "
            f"{ended.phase.value}"
        ) from None
    return verdict
