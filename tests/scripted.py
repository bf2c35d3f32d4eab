"""Activities registered under medkit's activity names with scripted outcomes.

The state-machine tests need exact outcomes ("the first rung fails validation, the second
succeeds"), so probes and actions are replaced by name with these; notifications stay real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from temporalio import activity
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.fleet import FleetActivities
from activities.notify import NotifyActivities
from activities.record import RecordActivities
from models.actions import OUTCOME_UNKNOWN, ActionRequest, ActionResult
from models.detection import Detection
from models.fleet import LeaseRelease, LeaseRequest
from models.phases import Phase, Severity
from models.policy import PolicyFile, ServicePolicy
from models.probes import ProbeResult, ProbeRound, ProbeRoundRequest
from models.status import RecoveryStatus
from tests.conftest import running
from workers.client import start_or_join_recovery
from workers.worker import HEARTBEAT_THROTTLE
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow

HISTORY_DIR = Path(__file__).parent / "histories"


class Script:
    """Outcomes per probe name (a queue, then a default), a record of the actions run, and the
    actions that answer OutcomeUnknown (`outcome_unknown`)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, deque[bool]] = {}
        self.default_healthy: dict[str, bool] = {}
        self.actions: list[str] = []
        self.block_actions = False
        self.outcome_unknown: set[str] = set()
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.round_seconds = 0.0
        self.probe_gate: asyncio.Event | None = None
        self.probe_waiting = asyncio.Event()

    def probe(self, name: str, *outcomes: bool, then: bool = True) -> None:
        """Script a probe: these outcomes in order, then `then` forever."""
        self.outcomes[name] = deque(outcomes)
        self.default_healthy[name] = then

    def _next(self, name: str) -> bool:
        queue = self.outcomes.get(name)
        if queue:
            return queue.popleft()
        return self.default_healthy.get(name, True)

    @activity.defn(name="probe_service")
    async def probe_service(self, request: ProbeRoundRequest) -> ProbeRound:
        """A scripted probe round: each probe's next scripted outcome, after `round_seconds`;
        while `probe_gate` is given, a round starts only once it is set (`probe_waiting` is set
        when one waits), so a test holds a round in flight for as long as it needs."""
        if self.probe_gate is not None:
            self.probe_waiting.set()
            await self.probe_gate.wait()
        await asyncio.sleep(self.round_seconds)
        results = []
        for spec in request.probes:
            healthy = self._next(spec.name)
            results.append(ProbeResult(
                probe=spec.name, kind=spec.kind, healthy=healthy,
                failure=None if healthy else "bad_status",
                detail="scripted healthy" if healthy else "scripted failure", at=datetime.now(UTC),
            ))
        return ProbeRound(results=results, seconds=self.round_seconds)

    async def _act(self, request: ActionRequest) -> ActionResult:
        self.actions.append(request.action_name)
        if request.action_name in self.outcome_unknown:  # as a retry after a crash mid-step
            raise ApplicationError(f"a previous attempt started {request.action_name} and its "
                                   "outcome was not recorded", type=OUTCOME_UNKNOWN,
                                   non_retryable=True)
        try:
            while self.block_actions:  # held until the test unblocks it, or cancelled
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.append(request.action_name)
            raise
        self.finished.append(f"{request.service}:{request.action_name}")
        return ActionResult(action_name=request.action_name, kind=request.spec.kind, ok=True,
                            detail=f"scripted {request.spec.kind}",
                            simulated=request.dry_run)

    @activity.defn(name="restart_process")
    async def restart_process(self, request: ActionRequest) -> ActionResult:
        """Scripted restart."""
        return await self._act(request)

    @activity.defn(name="run_command")
    async def run_command(self, request: ActionRequest) -> ActionResult:
        """Scripted command."""
        return await self._act(request)

    @activity.defn(name="set_breaker")
    async def set_breaker(self, request: ActionRequest) -> ActionResult:
        """Scripted breaker toggle."""
        return await self._act(request)

    @activity.defn(name="http_action")
    async def http_action(self, request: ActionRequest) -> ActionResult:
        """Scripted admin request."""
        return await self._act(request)

    def worker(self, client: Client, task_queue: str, deps: ActivityDeps,
               request_lease: Callable[..., Any] | None = None,
               standing_in: dict[str, Callable[..., Any]] | None = None,
               ) -> contextlib.AbstractAsyncContextManager[Worker]:
        """A worker with the real workflows, these scripted probes and actions, and the real
        notifier, incident store and fleet activities (`request_lease`, when given, stands in
        for the real `request_fleet_lease`; `standing_in` replaces any of them by its
        activity name)."""
        record = RecordActivities(deps)
        fleet = FleetActivities(client)
        activities: dict[str, Callable[..., Any]] = {
            "probe_service": self.probe_service, "restart_process": self.restart_process,
            "run_command": self.run_command, "set_breaker": self.set_breaker,
            "http_action": self.http_action, "notify": NotifyActivities(deps).notify,
            "record_incident": record.record_incident,
            "count_recent_actions": record.count_recent_actions,
            "request_fleet_lease": request_lease or fleet.request_fleet_lease,
            "release_fleet_lease": fleet.release_fleet_lease,
            "find_closed_recoveries": fleet.find_closed_recoveries,
        }
        unknown = set(standing_in or {}) - set(activities)
        assert not unknown, f"no such activity to stand in for: {sorted(unknown)}"
        activities.update(standing_in or {})
        return running(Worker(
            client, task_queue=task_queue, workflows=[RecoveryWorkflow, FleetCoordinatorWorkflow],
            activities=list(activities.values()),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        ))


def scripted_policy(webhook_url: str, **overrides: Any) -> ServicePolicy:
    """A two-probe service with a two-rung major ladder and an approval-gated critical ladder."""
    data: dict[str, Any] = {
        "name": "checkout",
        "probes": [
            {"kind": "http", "name": "http", "url": "http://127.0.0.1:9/healthz"},
            {"kind": "tcp", "name": "tcp", "port": 9},
        ],
        "actions": {
            "restart": {"kind": "restart_process", "argv": ["true"], "pid_file": "/tmp/x.pid"},
            "failover": {"kind": "command", "argv": ["true"]},
            "page": {"kind": "notify", "routes": ["oncall"], "message": "heads up"},
        },
        "ladders": {
            "minor": [{"name": "restart", "steps": [{"action": "restart"}]}],
            "major": [
                {"name": "restart", "steps": [{"action": "restart"}, {"check": True}]},
                {"name": "failover", "steps": [{"action": "page"}, {"action": "failover"}]},
            ],
            "critical": [{"name": "emergency-failover", "steps": [
                {"action": "failover", "requires_approval": True, "approval_timeout": "10m"},
            ]}],
        },
        "validation": {"samples": 2, "interval": "5s"},
        "retry": {"max_attempts": 2, "initial_backoff": "10s"},
        "escalation": {"after": "5m", "max_escalations": 2, "routes": ["oncall"]},
        "routes": {"oncall": {"kind": "webhook", "url": webhook_url}},
    }
    data.update(overrides)
    return PolicyFile.model_validate({"services": [data]}).services[0]


def blocking_script() -> Script:
    """A script for a minor recovery whose actions block until the test sets `block_actions`
    to False: one probe fails in the first round, everything is healthy afterwards."""
    script = Script()
    script.block_actions = True
    script.probe("http", False)
    return script


def detection(service: str = "checkout", severity: Severity | None = None,
              summary: str = "checkout is failing", key: str | None = None,
              status: Literal["firing", "resolved"] = "firing") -> Detection:
    """A fresh detection; the incident key is unique per test unless given."""
    return Detection(
        detection_id=str(uuid.uuid4()), service=service,
        incident_key=key or f"t-{uuid.uuid4().hex[:8]}", source="cli", severity=severity,
        summary=summary, status=status, detected_at=datetime.now(UTC),
    )


async def start(client: Client, task_queue: str, policy: ServicePolicy,
                found: Detection) -> WorkflowHandle[RecoveryWorkflow, RecoveryStatus]:
    """Start (or join) the recovery as a detector would."""
    return await start_or_join_recovery(client, found, policy, task_queue)


async def handed_over(script: Script, client: Client, task_queue: str,
                      policy: ServicePolicy) -> tuple[WorkflowHandle[Any, Any], Detection]:
    """Start a recovery whose two probes keep failing and wait (timers skipped) until it hands
    over to a human: its handle and its first detection. Call inside `script.worker`."""
    script.probe("http", then=False)
    script.probe("tcp", then=False)
    first = detection()
    handle = await start(client, task_queue, policy, first)
    await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, skip_time=True)
    return handle, first


SKIP_STEP = timedelta(seconds=10)
"""Virtual time `wait_for_phase` skips between two status queries."""


async def skip_virtual_time(client: Client, duration: timedelta) -> None:
    """Fast-forward the time-skipping server by exactly `duration`, firing the timers due.

    Unlike unlocking time until a result arrives, this cannot run past the phase being waited
    for: unlocked, the server jumped from a recovery idle in ManualIntervention straight to the
    workflow's execution timeout before the test could lock it again, and the recovery timed out
    under the test (its decisions were then answered NOT_FOUND).
    """
    request = SleepRequest()
    request.duration.FromTimedelta(duration)
    await client.test_service.unlock_time_skipping_with_sleep(request)


async def wait_for_phase(handle: WorkflowHandle[Any, Any], phase: Phase, timeout: float = 30.0,
                         skip_time: bool = False) -> RecoveryStatus:
    """Poll the status query until the recovery is in `phase`.

    With skip_time (time-skipping server only), each poll that finds another phase skips
    `SKIP_STEP` of virtual time, so backoffs and escalation timers fire without running past
    `phase` by more than one step; without it, timers run in real time.
    """
    client: Client = handle._client  # the handle's own (time-skipping) client
    deadline = asyncio.get_running_loop().time() + timeout
    status: RecoveryStatus | None = None
    while asyncio.get_running_loop().time() < deadline:
        status = await handle.query(RecoveryWorkflow.status)
        if status.phase == phase:
            return status
        if skip_time:
            await skip_virtual_time(client, SKIP_STEP)
        else:
            await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {phase}; last status phase: "
                         f"{status.phase if status else None}")


def phases(status: RecoveryStatus) -> list[str]:
    """The sequence of phases the recovery moved through."""
    path = [status.timeline[0].from_phase.value]
    path += [e.to_phase.value for e in status.timeline if e.kind == "transition"]
    return path


async def save_history(handle: WorkflowHandle[Any, Any], name: str,
                       when: Callable[[], bool] = lambda: True) -> None:
    """With MEDKIT_RECORD_HISTORIES=1, save the run's history for the replay tests."""
    if os.environ.get("MEDKIT_RECORD_HISTORIES") != "1" or not when():
        return
    history = await handle.fetch_history()
    HISTORY_DIR.mkdir(exist_ok=True)
    (HISTORY_DIR / f"{name}.json").write_text(history.to_json())


async def lease_and_give_back(fleet: FleetActivities, other: LeaseRequest, n: int) -> None:
    """Keep the coordinator busy: the `n`th request and release for the `payments` service, by a
    recovery otherwise like `other`."""
    busy = other.model_copy(update={"request_id": f"busy-{n}", "service": "payments",
                                    "workflow_id": f"recovery:busy-{n}"})
    await fleet.request_fleet_lease(busy)
    await fleet.release_fleet_lease(LeaseRelease(
        service="payments", workflow_id=busy.workflow_id, run_id=busy.run_id,
        task_queue=busy.task_queue))
