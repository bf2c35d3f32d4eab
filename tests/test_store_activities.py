"""record_incident and count_recent_actions as local activities of a real workflow on a real worker."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.process import ProcessSupervisor
from activities.registry import build_activities
from models.incident_record import BudgetQuery, IncidentRecord, IncidentRecorded
from models.phases import Phase
from models.status import RecoveryStatus
from store.incidents import IncidentStore
from tests.test_store import FULL_TIMELINE, status

LOCAL = timedelta(seconds=10)
"""The start-to-close timeout RecoveryWorkflow gives record_incident and count_recent_actions."""


@workflow.defn(sandboxed=False)
class RecordingWorkflow:
    """Records each given status of itself, as RecoveryWorkflow does at each transition."""

    @workflow.run
    async def run(self, statuses: list[RecoveryStatus], budget: BudgetQuery) -> list[int]:
        """The new entries each record stored, then the budget count."""
        added: list[int] = []
        for recovery in statuses:
            recorded = await workflow.execute_local_activity(
                "record_incident", IncidentRecord(run_id=workflow.info().run_id, status=recovery),
                result_type=IncidentRecorded, start_to_close_timeout=LOCAL)
            added.append(recorded.new_entries)
        count = await workflow.execute_local_activity(
            "count_recent_actions", budget, result_type=int, start_to_close_timeout=LOCAL)
        return [*added, count]


async def test_a_workflow_records_itself_and_reads_its_budget(ts_env: WorkflowEnvironment,
                                                               tmp_path: Path) -> None:
    deps = ActivityDeps.create(tmp_path)
    queue, workflow_id = f"q-{uuid.uuid4().hex[:8]}", f"recovery:web:{uuid.uuid4().hex[:8]}"
    for n, activity in enumerate(["restart_process", "restart_process", "run_command"]):
        record = deps.ledger.begin(f"old/run/{n}", workflow_id="old", service="web", activity=activity)
        deps.ledger.finish(record.key, "{}")
    timelines = [FULL_TIMELINE[:2], FULL_TIMELINE[:2], FULL_TIMELINE[:6], FULL_TIMELINE]
    statuses = [status(timeline, workflow_id=workflow_id) for timeline in timelines]
    budget = BudgetQuery(service="web", activities=["restart_process"], window_seconds=3600)
    worker = Worker(ts_env.client, task_queue=queue, workflows=[RecordingWorkflow],
                    activities=build_activities(deps, ProcessSupervisor(tmp_path)))
    async with worker:
        handle = await ts_env.client.start_workflow(RecordingWorkflow.run, args=[statuses, budget],
                                                    id=workflow_id, task_queue=queue)
        result = await handle.result()
    assert result == [2, 0, 4, len(FULL_TIMELINE) - 6, 2]
    store = IncidentStore(deps.ledger.engine)
    incident = store.find(workflow_id)
    assert incident.run_id == handle.result_run_id
    assert incident.phase == Phase.RECOVERED.value
    assert len(store.detail(incident).timeline) == len(FULL_TIMELINE)
    assert deps.ledger.count_actions("web", ["restart_process"], datetime.now(UTC) - timedelta(hours=1)) == 2
    await deps.http.aclose()


@workflow.defn(sandboxed=False)
class OneAttemptWorkflow:
    """Runs one store activity once, as the recovery does (local, LOCAL timeout), and says how it
    ended: "ok", or the failure's cause."""

    @workflow.run
    async def run(self, name: str, arg: IncidentRecord | BudgetQuery) -> str:
        """"ok" or the failure."""
        try:
            await workflow.execute_local_activity(name, arg, start_to_close_timeout=LOCAL,
                                                  retry_policy=RetryPolicy(maximum_attempts=1))
        except (ActivityError, ApplicationError) as err:  # a local activity's may arrive bare
            return f"{type(err.cause or err).__name__}: {err.cause or err}"
        return "ok"


async def test_an_attempt_gives_up_on_the_lock_before_its_timeout(ts_env: WorkflowEnvironment,
                                                                  tmp_path: Path) -> None:
    """Another process holding SQLite's write lock makes each store activity fail with "database
    is locked" within its own timeout, rather than time out while its thread waits on and
    writes after the attempt was given up."""
    deps = ActivityDeps.create(tmp_path)
    queue, workflow_id = f"q-{uuid.uuid4().hex[:8]}", f"recovery:web:{uuid.uuid4().hex[:8]}"
    other = sqlite3.connect(tmp_path / "medkit.db", isolation_level=None)
    worker = Worker(ts_env.client, task_queue=queue, workflows=[OneAttemptWorkflow],
                    activities=build_activities(deps, ProcessSupervisor(tmp_path)))
    calls: list[tuple[str, IncidentRecord | BudgetQuery]] = [
        ("record_incident", IncidentRecord(run_id="run-1", status=status(FULL_TIMELINE[:2],
                                                                         workflow_id=workflow_id))),
        ("count_recent_actions", BudgetQuery(service="web", activities=["restart_process"],
                                             window_seconds=60)),
    ]
    try:
        other.execute("BEGIN IMMEDIATE")
        async with worker:
            for n, (name, arg) in enumerate(calls):
                ended = await ts_env.client.execute_workflow(
                    OneAttemptWorkflow.run, args=[name, arg], id=f"{workflow_id}-{n}", task_queue=queue)
                assert ended.startswith("ApplicationError") and "database is locked" in ended, name
    finally:
        other.close()
        await deps.http.aclose()
    assert IncidentStore(deps.ledger.engine).recent() == []
