"""End to end on the real Temporal dev server: the demo service really breaks and is really restarted.

The health poller detects it, RecoveryWorkflow assesses it, restart_process kills and respawns
the real process, validation probes it, and the recovery ends Recovered, visible through the
search attributes, the static summary and the current details the Temporal UI shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from activities.process import ProcessSupervisor
from demo.policy import DEMO_SERVICE, demo_policy
from detectors.health_poller import run_health_poller
from models.detection import Detection
from models.phases import Phase
from models.policy import PolicyFile, ServicePolicy
from models.status import RecoveryStatus
from tests.conftest import DemoService, eventually, policy_file, running
from workers.client import start_or_join_recovery
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow


class Medkit:
    """The worker and the health poller running against the dev server, recording what started."""

    def __init__(self, client: Client, queue: str, policy: ServicePolicy) -> None:
        self.client = client
        self.queue = queue
        self.policy = policy
        self.handles: list[WorkflowHandle[RecoveryWorkflow, RecoveryStatus]] = []

    async def report(self, detection: Detection, policy: ServicePolicy) -> None:
        """The poller's report path, exactly as `medkit dev` wires it."""
        self.handles.append(await start_or_join_recovery(self.client, detection, policy, self.queue))


@pytest.fixture
async def medkit(dev_env: WorkflowEnvironment, demo_service: DemoService,
                 tmp_path: Path) -> AsyncIterator[Medkit]:
    policy = PolicyFile.model_validate(demo_policy(demo_service.port, tmp_path)).service(DEMO_SERVICE)
    queue = f"e2e-{demo_service.port}"
    stack = Medkit(dev_env.client, queue, policy)
    deps = ActivityDeps.create(tmp_path)
    worker = build_worker(dev_env.client, queue, deps, policy_file(policy), ProcessSupervisor(tmp_path))
    async with running(worker):
        poller = asyncio.ensure_future(run_health_poller([policy], stack.report))
        yield stack
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    await deps.http.aclose()


async def recovered(medkit: Medkit) -> RecoveryStatus:
    """Wait for the poller to start a recovery and for it to finish."""
    await eventually(lambda: _started(medkit), timeout=30)
    assert len({h.result_run_id for h in medkit.handles}) == 1, "one failure streak, one recovery"
    return await asyncio.wait_for(medkit.handles[0].result(), timeout=60)


async def _started(medkit: Medkit) -> bool:
    return bool(medkit.handles)


def assert_restarted(demo: DemoService, old_pid: int, status: RecoveryStatus) -> None:
    new_pid = demo.pid()
    assert new_pid != old_pid
    assert psutil.pid_exists(new_pid)
    old_gone = not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    assert old_gone, f"pid {old_pid} still runs"
    actions = [e.reason for e in status.timeline if e.kind == "action"]
    assert any(f"started pid {new_pid}" in reason for reason in actions), actions


async def assert_ui_story(client: Client, status: RecoveryStatus) -> None:
    """Search attributes, summary and details tell the story in the Temporal UI."""
    handle = client.get_workflow_handle(status.workflow_id)
    description = await handle.describe()
    assert (await description.static_summary() or "").startswith(f"{DEMO_SERVICE}: ")
    query = (f"WorkflowId = '{status.workflow_id}' AND MedkitService = '{DEMO_SERVICE}' "
             f"AND MedkitPhase = 'Recovered' AND MedkitOutcome = 'Recovered'")

    async def listed() -> bool:
        return bool([w async for w in client.list_workflows(query)])

    await eventually(listed, timeout=15)
    history = await handle.fetch_history()
    summaries = [e.user_metadata.summary for e in history.events if e.HasField("user_metadata")]
    assert any(b"restart (restart_process)" in s.data for s in summaries)


async def test_unhealthy_endpoint_is_detected_restarted_and_validated(
    medkit: Medkit, demo_service: DemoService
) -> None:
    old_pid = demo_service.pid()
    demo_service.inject("unhealthy")
    status = await recovered(medkit)
    assert status.phase == Phase.RECOVERED
    assert status.workflow_id == f"recovery:{DEMO_SERVICE}:health"
    assert status.timeline[0].actor == "health_poller"
    assert [e.to_phase.value for e in status.timeline if e.kind == "transition"] == [
        "Assessing", "AutoRemediation", "Validating", "Recovered"]
    assert status.severity is not None and status.severity.value == "minor"
    assert_restarted(demo_service, old_pid, status)
    await assert_ui_story(medkit.client, status)


async def test_killed_process_is_detected_and_respawned(
    medkit: Medkit, demo_service: DemoService
) -> None:
    old_pid = demo_service.pid()
    psutil.Process(old_pid).kill()
    status = await recovered(medkit)
    assert status.phase == Phase.RECOVERED
    assert status.category in {"unreachable", "process_down"}
    assert status.severity is not None and status.severity.value == "major"
    assert_restarted(demo_service, old_pid, status)
    await assert_quick_steps_ran_locally(medkit.client, status)


async def assert_quick_steps_ran_locally(client: Client, status: RecoveryStatus) -> None:
    """The breaker toggle (one request) ran as a local activity inside a workflow task; the
    half-open step with its trials and the restart ran as regular activities."""
    history = await client.get_workflow_handle(status.workflow_id).fetch_history()
    local, regular = [], []
    for event in history.events:
        summary = event.user_metadata.summary.data.decode() if event.HasField("user_metadata") else ""
        if event.HasField("marker_recorded_event_attributes"):
            local.append(summary)
        elif event.HasField("activity_task_scheduled_event_attributes"):
            regular.append(summary)
    assert any("breaker-open (breaker)" in s for s in local), local
    assert not any("breaker-open" in s for s in regular), regular
    assert any("breaker-trial (breaker)" in s for s in regular), regular
    assert any("restart (restart_process)" in s for s in regular), regular
