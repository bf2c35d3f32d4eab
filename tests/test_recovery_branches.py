"""Recovery branches no other test reaches: a worker's side of a recovery failing (probes, the
incident store, the lease release), the resolve signal, a budget of other actions, reports and
decisions that arrive while a recovery is closing, and reports without summary or timezone.

Probes and actions are scripted by activity name (tests/scripted.py); notifications, the
incident store and the fleet coordinator are real, on a real Temporal server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.fleet import LeaseRelease, coordinator_workflow_id
from models.incident_record import IncidentRecord, IncidentRecorded
from models.phases import DecisionKind, Phase, Severity
from models.probes import ProbeRound, ProbeRoundRequest
from models.status import RecoveryStatus
from store.incidents import IncidentNotFound, IncidentStore
from tests.conftest import WebhookReceiver, eventually
from tests.scripted import Script, detection, handed_over, phases, scripted_policy, start
from tests.test_recovery_paths import operator
from workers.client import DecisionRejected, send_decision
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import POLICY_MISMATCH, RecoveryWorkflow

RESTART = [{"name": "restart", "steps": [{"action": "restart"}]}]
"""One rung, one restart, on every ladder."""


class FailingProbes(Script):
    """A script whose probe round fails outright (the activity raises) its first `failures`
    attempts, and whose rounds are refused as a policy mismatch while `refuse` is set."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.refuse = False
        self.refused = 0

    @activity.defn(name="probe_service")
    async def probe_service(self, request: ProbeRoundRequest) -> ProbeRound:
        """Fail, refuse, or answer as scripted."""
        if self.failures > 0:
            self.failures -= 1
            raise ApplicationError("probe host unreachable")
        if self.refuse:
            self.refused += 1
            raise ApplicationError("this worker's policy file holds no such probe",
                                   type=POLICY_MISMATCH, non_retryable=True)
        return await super().probe_service(request)


async def test_a_probe_round_that_fails_its_attempts_counts_every_probe_unhealthy(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A probe round whose activity fails both its attempts (PROBE_RETRY) is not a stalled or
    failed recovery: every probe of the round counts as unhealthy, with why, and the recovery
    goes on from there (here: assessed, remediated, recovered)."""
    script = FailingProbes(failures=2)  # both attempts of the assessment's round
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(summary=""))
        result = await handle.result()
    assert result.phase == Phase.RECOVERED
    assert result.evidence == ["http (http) UNHEALTHY: probe failed: probe host unreachable",
                               "tcp (tcp) UNHEALTHY: probe failed: probe host unreachable"]
    assessed = next(e.reason for e in result.timeline if e.kind == "probe")
    assert "2 of 2 probes failing" in assessed, assessed


async def test_a_probe_refused_while_revalidating_a_resolved_report_keeps_the_handover(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """In ManualIntervention the source reports the problem resolved, and the worker refuses
    the validating probes (its policy file does not hold them): that is no validation, so the
    recovery goes back to ManualIntervention saying why, and still takes the human's decision.
    Raised instead, the refusal would fail the workflow task on every attempt."""
    script = FailingProbes()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, first = await handed_over(script, ts_env.client, queue, policy)
        script.refuse = True
        await start(ts_env.client, queue, policy,
                    detection(key=first.incident_key, status="resolved", summary="alert cleared"))

        async def back_in_manual() -> RecoveryStatus | None:
            status = await handle.query(RecoveryWorkflow.status)
            back = (status.phase == Phase.MANUAL_INTERVENTION
                    and phases(status)[-2:] == ["Validating", "ManualIntervention"])
            return status if back else None

        status = await eventually(back_in_manual)
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator("fixed"))
        result = await handle.result()
    assert script.refused == 1
    assert status.timeline[-1].reason == (
        "still unhealthy after source resolved: the worker refused to probe checkout: "
        "PolicyMismatch: this worker's policy file holds no such probe")
    assert status.pending_decision is not None and status.pending_decision.kind == "manual"
    assert result.phase == Phase.RESOLVED


async def test_the_resolve_signal_ends_manual_intervention_as_resolved(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A resolve sent as a signal (older clients, scripts; no answer expected) is taken as the
    update is: the recovery ends Resolved by that operator, the timeline says it came by
    signal."""
    script = Script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, _ = await handed_over(script, ts_env.client, queue, policy)
        await handle.signal(RecoveryWorkflow.resolve, operator("fixed DNS by hand"))
        result = await handle.result()
    assert result.phase == Phase.RESOLVED
    assert [(e.reason, e.actor) for e in result.timeline if e.kind == "decision"] == [
        ("resolve (signal): fixed DNS by hand", "alice")]
    end = [e for e in result.timeline if e.kind == "transition"][-1]
    assert (end.reason, end.actor) == ("resolved by operator: fixed DNS by hand", "alice")


async def test_a_budget_of_other_actions_does_not_stop_this_one(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A budget counts only the actions it names: a used-up failover budget does not stop a
    restart, which runs and recovers the service."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1},
                             budgets=[{"actions": ["failover"], "max_actions": 0}])
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.RECOVERED, [e.reason for e in result.timeline]
    assert script.actions == ["restart"]


class BrokenStore:
    """`record_incident` against a database that refuses every write."""

    def __init__(self) -> None:
        self.attempts = 0

    @activity.defn(name="record_incident")
    async def record_incident(self, record: IncidentRecord) -> IncidentRecorded:
        """Fail."""
        self.attempts += 1
        raise ApplicationError("database is locked")


async def test_incident_store_writes_that_keep_failing_are_skipped_not_fatal(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """The incident store is memory, not control: writes that fail all their attempts, the
    ones during the recovery and the closing one, are given up, and the recovery acts and ends
    as it would have (a failed write raised would fail the whole run)."""
    store = BrokenStore()
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1})
    async with script.worker(ts_env.client, queue, deps,
                             standing_in={"record_incident": store.record_incident}):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.RECOVERED
    assert script.actions == ["restart"]
    assert store.attempts >= 6  # two writes at least (one while running, the closing one), 3 attempts each
    with pytest.raises(IncidentNotFound):
        IncidentStore(deps.ledger.engine).find(handle.id)


class LostRelease:
    """`release_fleet_lease` that never reaches the coordinator."""

    def __init__(self) -> None:
        self.attempts = 0

    @activity.defn(name="release_fleet_lease")
    async def release_fleet_lease(self, release: LeaseRelease) -> None:
        """Fail."""
        self.attempts += 1
        raise ApplicationError("coordinator unreachable")


async def test_a_lease_release_that_keeps_failing_leaves_the_lease_to_the_check_of_holders(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A release that fails all its attempts is logged and given up: the recovery still ends
    as it would have (raised, the failure would fail the run that already recovered its
    service), and the coordinator keeps the lease until its check of the holders finds the
    recovery ended."""
    client = dev_env.client
    release = LostRelease()
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1})
    async with script.worker(client, queue, deps,
                             standing_in={"release_fleet_lease": release.release_fleet_lease}):
        handle = await start(client, queue, policy, detection())
        result = await asyncio.wait_for(handle.result(), timeout=120)
        leases = await client.get_workflow_handle_for(
            FleetCoordinatorWorkflow.run, coordinator_workflow_id(queue)).query(
            FleetCoordinatorWorkflow.leases)
    assert result.phase == Phase.RECOVERED
    assert release.attempts == 5  # RELEASE_RETRY.maximum_attempts
    assert leases.holders[policy.name].workflow_id == handle.id


@pytest.fixture
def held_recovered_page(webhook_receiver: WebhookReceiver) -> Iterator[tuple[threading.Event,
                                                                            threading.Event]]:
    """Hold the first `recovered` page at the webhook receiver until the test lets it go:
    (arrived, let_go). The recovery has ended (Recovered) and its run is still closing."""
    arrived, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        if webhook_receiver.received[-1].get("event") == "recovered" and not arrived.is_set():
            arrived.set()
            let_go.wait(timeout=120)

    webhook_receiver.on_post = hold
    try:
        yield arrived, let_go
    finally:
        let_go.set()


async def test_decisions_and_reports_after_the_end_while_the_run_closes(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
    held_recovered_page: tuple[threading.Event, threading.Event],
) -> None:
    """Between the terminal transition and the end of the run (the last page still going out),
    a decision is refused saying the recovery already ended, and of two new reports the first
    starts the next recovery while the second is recorded as ignored (one next recovery is
    started per run, and it already has its report)."""
    arrived, let_go = held_recovered_page
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1},
                             ladders={"minor": RESTART, "major": RESTART, "critical": RESTART})
    first = detection(severity=Severity.CRITICAL)  # paged at once, so the end is paged too
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, first)
        first_run = handle.result_run_id
        assert await asyncio.to_thread(arrived.wait, 60)
        with pytest.raises(DecisionRejected) as refused:
            await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator())
        again, third = (detection(severity=Severity.CRITICAL, key=first.incident_key,
                                  summary=summary) for summary in ("broken again", "and again"))
        for report in (again, third):
            await start(ts_env.client, queue, policy, report)
        closing = await handle.query(RecoveryWorkflow.status)
        let_go.set()
        result = await handle.result()
        ended = await ts_env.client.get_workflow_handle(handle.id, run_id=first_run).query(
            RecoveryWorkflow.status)
    assert str(refused.value) == "abort rejected: cannot abort: the recovery already ended as Recovered"
    assert closing.phase == Phase.RECOVERED
    late = [(e.kind, e.reason) for e in ended.timeline if e.kind in ("report", "ignored")][1:]
    assert late == [
        ("report", "report from cli arrived while the recovery was ending: broken again; a new "
                   "recovery starts with it"),
        ("ignored", "ignored report from cli: recovery ended"),
    ], late
    assert ended.reports == 1
    assert "broken again" in result.timeline[0].reason


async def test_a_report_without_summary_adds_no_evidence_line_of_its_own(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A detector's report with no summary is recorded as reporting a "problem", and the
    evidence is the probes' alone: no empty "source: " line heads it."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(summary=""))
        result = await handle.result()
    assert result.timeline[0].reason == "cli reported: problem"
    assert [line.split(" ")[0] for line in result.evidence] == ["http", "tcp"], result.evidence


async def test_a_detection_time_without_timezone_is_taken_as_utc(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
) -> None:
    """A detector that stamps its report without a timezone means UTC: the first timeline entry
    is stamped at that moment (compared with an aware time as it was, it would fail every
    workflow task of the recovery from its first)."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1})
    seen = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    naive = detection().model_copy(update={"detected_at": seen.replace(tzinfo=None)})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, naive)
        try:
            result = await asyncio.wait_for(handle.result(), timeout=60)
        except TimeoutError:
            pytest.fail("the recovery never ended: its workflow tasks fail on the naive time")
    assert result.phase == Phase.RECOVERED
    assert result.timeline[0].at == seen
