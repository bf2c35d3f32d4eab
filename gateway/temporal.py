"""The gateway's Temporal side: a lazily (re)connected client and time-bounded calls.

Every call is bounded by `timeout` seconds. An unreachable server, a deadline or a
connection failure becomes TemporalUnavailable (HTTP 503, which Alertmanager retries); a request
Temporal refuses for its size becomes TemporalPayloadTooLarge (HTTP 413: sending it again cannot
succeed, so it must not be retried); any other server error becomes TemporalFailed (HTTP 502).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    SignalWithStartWorkflowExecutionResponse,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from models import search_attributes as sa
from models.breaker_entity import BreakerCommand, BreakerEntityState, OutcomeReport
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import Detection, ReportBatch, recovery_workflow_id
from models.phases import DecisionKind
from models.policy import ServicePolicy
from models.status import RecoveryStatus
from workers.breaker_entities import command_entity, entity_status, report_outcome
from workers.client import (
    EXPLAIN_STEP_SECONDS,
    NoWorkerAnswered,
    TemporalNotAnswering,
    TemporalTarget,
    connect,
    fetch_status,
    repeats_of_ended_run,
    send_decision,
    start_or_join_recovery,
    start_or_join_recovery_with,
    temporal_answers,
    within,
)
from workers.unreachable import unreachable_message
from workflows.recovery import RecoveryWorkflow

T = TypeVar("T")

_EXPLAIN_SECONDS = 3 * EXPLAIN_STEP_SECONDS
"""Time beyond the gateway's timeout for a status query or decision nobody answered to find out
why (Temporal's health, the recovery's task queue, its pollers), so the 503 says so."""

_UNAVAILABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED,
                RPCStatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Delivery:
    """What one start-or-join call did: the recovery's id, whether it started a new run, and
    which reports were repeats of ones its ended latest run counted (not sent)."""

    workflow_id: str
    started: bool
    repeats: frozenset[str]


class TemporalUnavailable(RuntimeError):
    """Temporal could not be reached in time; the request may be retried as a whole."""


class TemporalFailed(RuntimeError):
    """Temporal answered with an error the gateway does not map to a client error."""


class TemporalPayloadTooLarge(RuntimeError):
    """Temporal refused the request for its size; the same request will always be refused."""


_TOO_LARGE = ("larger than max", "size exceeds limit", "exceeds size limit")
"""How the server says a request is too large: gRPC's message limit (RESOURCE_EXHAUSTED,
"received message after decompression larger than max 4194304") and Temporal's blob limit
(INVALID_ARGUMENT, "Blob data size exceeds limit.")."""


def too_large(err: RPCError) -> bool:
    """Whether Temporal refused the request for its size (not for load, which is worth a retry)."""
    message = err.message.lower()
    return (err.status in (RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.INVALID_ARGUMENT)
            and any(marker in message for marker in _TOO_LARGE))


@dataclass(frozen=True)
class RecoveryRow:
    """One recovery in a visibility listing."""

    workflow_id: str
    service: str | None
    phase: str | None
    severity: str | None
    outcome: str | None
    running: bool
    started_at: str


def started_new(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether signal-with-start started a new run (True) or joined the running one (False).

    The server says so in `SignalWithStartWorkflowExecutionResponse.started`. The SDK keeps
    that response on the handle but has no public accessor, and `first_execution_run_id`
    cannot tell the two apart (on server 1.32+ it is set for a join as well), so the
    response is read here, in one place; the gateway tests pin this behaviour.
    """
    response = getattr(handle, "_start_workflow_response", None)
    if not isinstance(response, SignalWithStartWorkflowExecutionResponse):
        raise TemporalFailed("the Temporal SDK no longer exposes the signal-with-start response")
    return bool(response.started)


class TemporalGateway:
    """Owns the gateway's Temporal client; connects on first use and after a failed connect."""

    def __init__(self, target: TemporalTarget, timeout: float = 10.0,
                 client: Client | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self._client = client
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        """The connected client, connecting now if needed."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(self._connect(), self.timeout)
                except TemporalFailed:
                    raise
                except (TimeoutError, RuntimeError, RPCError, ValueError) as err:
                    raise TemporalUnavailable(
                        unreachable_message(self.target, err, self.timeout)) from None
                except OSError as err:  # a TLS file missing
                    raise TemporalUnavailable(
                        f"cannot connect to Temporal at {self.target.address}: {err}") from None
            return self._client

    async def _connect(self) -> Client:
        """A new client, once Temporal has said it has the namespace (TemporalFailed if not).

        Connecting does not check the namespace, and with a wrong one every recovery looks
        missing: status and decisions would answer 404 and resolved alerts be dropped as
        `no_recovery` (202, never retried). Unchecked (no client kept), each request asks again,
        so the gateway recovers by itself once the namespace exists. Credentials that may not
        describe namespaces skip the check."""
        client = await connect(self.target)
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=self.target.namespace))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise TemporalFailed(
                    f"namespace {self.target.namespace!r} not found on the Temporal server at "
                    f"{self.target.address} (medkit serve --namespace, or TEMPORAL_NAMESPACE)"
                ) from None
            if err.status != RPCStatusCode.PERMISSION_DENIED:
                raise
        return client

    async def _bounded(self, work: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """`work` within `timeout` seconds (default the gateway's), its failures mapped to
        TemporalUnavailable / TemporalPayloadTooLarge; other RPC errors are the caller's. A
        request cancelled from outside (its client gone) stays a cancellation."""
        limit = self.timeout if timeout is None else timeout
        try:
            return await within(work, limit)
        except TimeoutError:
            raise TemporalUnavailable(f"{what}: Temporal did not answer within "
                                      f"{limit:g}s") from None
        except NoWorkerAnswered as err:
            raise TemporalUnavailable(str(err)) from None
        except TemporalNotAnswering as err:
            raise TemporalUnavailable(
                f"{err}: send the request again once /readyz answers 200") from None
        except RPCError as err:
            if too_large(err):
                raise TemporalPayloadTooLarge(f"{what}: Temporal refused the request as too "
                                              f"large ({err.message})") from None
            if err.status in _UNAVAILABLE:
                raise TemporalUnavailable(f"{what}: Temporal unavailable ({err.message})") from None
            raise

    async def unready_reason(self) -> str | None:
        """None when Temporal has the gateway's namespace and answers a health check; else why
        the gateway cannot serve (for /readyz)."""
        try:
            client = await self.client()
        except (TemporalUnavailable, TemporalFailed) as err:
            return str(err)
        if await temporal_answers(client, self.timeout):
            return None
        return f"Temporal at {self.target.address} is unreachable"

    async def start_or_join(self, detections: Sequence[Detection], policy: ServicePolicy,
                            dry_run: bool) -> Delivery:
        """Signal-with-start the recovery with these reports of it (one `report` signal, or one
        `report_batch` for several), leaving out the repeats of reports its ended latest run
        already counted (workers.client.repeats_of_ended_run): when every report is such a
        repeat, nothing is sent and nothing starts."""
        client = await self.client()
        queue = self.target.task_queue
        workflow_id = recovery_workflow_id(detections[0].service, detections[0].incident_key)
        try:
            repeats = await self._bounded(
                repeats_of_ended_run(client, workflow_id, [d.detection_id for d in detections]),
                "check for an ended recovery")
        except RPCError as err:
            raise TemporalFailed(f"Temporal refused to describe the recovery: {err.message}") from None
        fresh = [d for d in detections if d.detection_id not in repeats]
        if not fresh:
            return Delivery(workflow_id, started=False, repeats=frozenset(repeats))
        start = (start_or_join_recovery(client, fresh[0], policy, queue, dry_run)
                 if len(fresh) == 1 else
                 start_or_join_recovery_with(client, ReportBatch(detections=fresh),
                                             policy, queue, dry_run))
        try:
            handle = await self._bounded(start, "start or join recovery")
        except RPCError as err:
            raise TemporalFailed(f"Temporal refused to start the recovery: {err.message}") from None
        return Delivery(handle.id, started=started_new(handle), repeats=frozenset(repeats))

    async def report_resolved(self, detection: Detection) -> bool:
        """Signal a resolved report to the running recovery; False if none is running."""
        client = await self.client()
        handle = client.get_workflow_handle_for(
            RecoveryWorkflow.run, recovery_workflow_id(detection.service, detection.incident_key))
        try:
            await self._bounded(handle.signal(RecoveryWorkflow.report, detection,
                                              rpc_timeout=timedelta(seconds=self.timeout)),
                                "report resolved")
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise TemporalFailed(f"Temporal refused the report: {err.message}") from None
        return True

    async def status(self, workflow_id: str) -> RecoveryStatus:
        """The recovery's status query (raises workers.client.RecoveryNotFound, also for a
        recovery ended in Temporal before any worker ran it: it never had a status). A recovery
        ended in Temporal after it ran says so in `closed_by_temporal`."""
        client = await self.client()
        try:
            return await self._bounded(fetch_status(client, workflow_id, timeout=self.timeout),
                                       "status query", self.timeout + _EXPLAIN_SECONDS)
        except RPCError as err:
            raise TemporalFailed(f"status query failed: {err.message}") from None

    async def decide(self, workflow_id: str, kind: DecisionKind,
                     decision: OperatorDecision) -> DecisionVerdict:
        """Send the decision as an update (raises DecisionRejected / RecoveryNotFound; a
        recovery ended in Temporal refuses it saying how, not by its last phase)."""
        client = await self.client()
        try:
            return await self._bounded(
                send_decision(client, workflow_id, kind, decision, timeout=self.timeout),
                f"{kind.value} update", self.timeout + _EXPLAIN_SECONDS)
        except RPCError as err:
            raise TemporalFailed(f"{kind.value} failed: {err.message}") from None

    async def breaker_status(self, name: str) -> BreakerEntityState:
        """The breaker entity's status query (raises BreakerEntityNotFound)."""
        client = await self.client()
        try:
            return await self._bounded(entity_status(client, name), "breaker status query")
        except RPCError as err:
            raise TemporalFailed(f"breaker status query failed: {err.message}") from None

    async def breaker_report(self, name: str, report: OutcomeReport) -> tuple[str, bool]:
        """Signal-with-start the entity with one outcome; its id and whether this call started it."""
        client = await self.client()
        try:
            handle = await self._bounded(
                report_outcome(client, name, report, self.target.task_queue), "breaker report")
        except RPCError as err:
            raise TemporalFailed(f"Temporal refused the breaker report: {err.message}") from None
        return handle.id, started_new(handle)

    async def breaker_command(self, name: str, command: BreakerCommand) -> BreakerEntityState:
        """Trip or reset the entity by its update (raises BreakerEntityNotFound)."""
        client = await self.client()
        try:
            return await self._bounded(command_entity(client, name, command), "breaker command")
        except RPCError as err:
            raise TemporalFailed(f"breaker command failed: {err.message}") from None

    async def list_recoveries(self, query: str, limit: int) -> list[RecoveryRow]:
        """Recoveries matching a visibility query built by the caller from validated values."""
        client = await self.client()

        async def collect() -> list[RecoveryRow]:
            rows: list[RecoveryRow] = []
            async for execution in client.list_workflows(
                    query, limit=limit, rpc_timeout=timedelta(seconds=self.timeout)):
                attrs = execution.typed_search_attributes
                rows.append(RecoveryRow(
                    workflow_id=execution.id, service=attrs.get(sa.SERVICE),
                    phase=attrs.get(sa.PHASE), severity=attrs.get(sa.SEVERITY),
                    outcome=attrs.get(sa.OUTCOME),
                    running=execution.status == WorkflowExecutionStatus.RUNNING,
                    started_at=execution.start_time.isoformat(),
                ))
            return rows

        try:
            return await self._bounded(collect(), "list recoveries")
        except RPCError as err:
            raise TemporalFailed(f"list failed: {err.message}") from None
