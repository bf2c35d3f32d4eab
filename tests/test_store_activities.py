"""record_incident and count_recent_actions as local activities of a real workflow on a real worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import workflow
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
