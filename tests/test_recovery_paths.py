"""Every path of the recovery state machine, on the time-skipping server.

Probes and actions are scripted by activity name so each path gets an exact outcome;
notifications are real HTTP posts to a local receiver.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from gateway.temporal import started_new
from models import search_attributes as sa
from models.decisions import DecisionVerdict, OperatorDecision
from models.detection import REPORTS_MEMO, ReportBatch
from models.incident_record import IncidentRecord
from models.phases import DecisionKind, Phase, Severity
from models.policy import ServicePolicy
from models.status import RecoveryStatus
from store.incidents import IncidentStore
from tests.conftest import WebhookReceiver, eventually
from tests.scripted import (
    Script,
    blocking_script,
    detection,
    handed_over,
    phases,
    save_history,
    scripted_policy,
    start,
    wait_for_phase,
)
from workers.client import DecisionRejected, send_decision
from workflows.recovery import PROBE_FRESHNESS, RecoveryWorkflow


async def _notified(handle: WorkflowHandle[Any, Any], event: str) -> RecoveryStatus | None:
    status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
    done = any(e.kind == "notification" and e.reason.endswith(event) for e in status.timeline)
    return status if done else None


def operator(reason: str = "looked at it") -> OperatorDecision:
    """A decision by the on-call engineer."""
    return OperatorDecision(operator="alice", reason=reason, at=datetime.now(UTC))


async def test_minor_success(ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
                             webhook_receiver: WebhookReceiver) -> None:
    script = Script()
    script.probe("http", False)  # one of two probes failing → minor
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
        await save_history(handle, "minor_success")
    assert result.phase == Phase.RECOVERED
    assert result.severity == Severity.MINOR
    assert phases(result) == ["Detected", "Assessing", "AutoRemediation", "Validating", "Recovered"]
    assert script.actions == ["restart"]
    assert result.outcome is not None and result.outcome.value == "Recovered"
    assert webhook_receiver.received == []  # nobody was paged for a minor self-heal


async def test_store_writes_leave_with_the_task_not_while_local_activities_run(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """A write scheduled while a local activity runs (the assessment probes, the lease request)
    could not leave before the task ends, and would only carry older news: the first write of a
    minor recovery carries AutoRemediation, not Assessing, and every transition is still stored."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
        written: list[str] = []
        async for event in handle.fetch_history_events():
            attrs = event.activity_task_scheduled_event_attributes
            if event.HasField("activity_task_scheduled_event_attributes") and \
                    attrs.activity_type.name == "record_incident":
                [record] = await ts_env.client.data_converter.decode(
                    attrs.input.payloads, [IncidentRecord])
                written.append(record.status.phase.value)
    assert written == ["AutoRemediation", "Validating"]
    stored = IncidentStore(deps.ledger.engine)
    detail = stored.detail(stored.find(handle.id))
    assert [row.to_phase for row in detail.timeline] == [e.to_phase.value for e in result.timeline]


async def test_one_request_actions_run_inside_the_workflow_task(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """A breaker toggle without trials and an http action run as local activities (markers in
    the history); the restart between them stays a regular activity."""
    script = Script()
    script.probe("http", False)  # both probes failing → major
    script.probe("tcp", False)
    restart = [{"name": "restart", "steps": [{"action": "restart"}]}]
    policy = scripted_policy(
        webhook_receiver.url,
        actions={
            "restart": {"kind": "restart_process", "argv": ["true"], "pid_file": "/tmp/x.pid"},
            "shed": {"kind": "breaker", "url": "http://127.0.0.1:9/breaker", "state": "open"},
            "warm": {"kind": "http", "url": "http://127.0.0.1:9/warm"},
        },
        ladders={"minor": restart, "critical": restart,
                 "major": [{"name": "shed-restart-warm", "steps": [
                     {"action": "shed"}, {"action": "restart"}, {"action": "warm"}]}]},
    )
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
        await save_history(handle, "local_actions")
        history = await handle.fetch_history()
    assert result.phase == Phase.RECOVERED
    assert script.actions == ["shed", "restart", "warm"]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]
    markers = [e.user_metadata.summary.data.decode() for e in history.events
               if e.HasField("marker_recorded_event_attributes")]
    assert "restart_process" in scheduled
    assert not {"set_breaker", "http_action"} & set(scheduled)
    assert any("shed (breaker)" in m for m in markers) and any("warm (http)" in m for m in markers)


async def test_major_first_rung_fails_second_succeeds(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    # assess: both fail (major); check after restart: fail; validation round 1: fail; the check
    # before the second rung acts, after the backoff: still failing; then healthy.
    script.probe("http", False, False, False, False)
    script.probe("tcp", False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
        await save_history(handle, "major_second_rung")
    assert result.phase == Phase.RECOVERED
    assert result.severity == Severity.MAJOR
    assert phases(result) == [
        "Detected", "Assessing", "GradualRecovery", "Validating", "RetryRecovery",
        "GradualRecovery", "Validating", "Recovered",
    ]
    assert script.actions == ["restart", "failover"]
    assert result.attempts == 2
    reasons = " | ".join(e.reason for e in result.timeline)
    assert "check failed" in reasons and "rung 'failover'" in reasons
    assert "still failing before page" in reasons
    assert webhook_receiver.events() == ["action"]  # the `page` notify step, nothing else


async def test_healthy_again_before_the_next_rung_validates_instead_of_acting(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The first rung failed validation, but the service healed during the backoff: the probe
    before the second rung finds it healthy, so medkit runs no second approach and validates."""
    script = Script()
    script.probe("http", False, False, False)  # assess, check after restart, validation round 1
    script.probe("tcp", False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.RECOVERED
    assert script.actions == ["restart"]
    assert phases(result)[-3:] == ["GradualRecovery", "Validating", "Recovered"]
    assert any("healthy again before page: not acting" in e.reason for e in result.timeline)
    assert webhook_receiver.events() == []


async def test_healthy_after_a_slow_emergency_page_is_dismissed_without_acting(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The critical path pages first; the page took longer than PROBE_FRESHNESS, so the
    assessment's probe round is too old to act on: medkit probes again, finds the service
    healthy and acts on nothing (it restarted a healthy service before)."""
    webhook_receiver.delays["emergency"] = PROBE_FRESHNESS.total_seconds() + 1
    script = Script()
    script.probe("http", False)  # the assessment sees the failure; healthy from then on
    restart = [{"name": "restart", "steps": [{"action": "restart"}]}]
    policy = scripted_policy(webhook_receiver.url,
                             ladders={"minor": restart, "major": restart, "critical": restart})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        result = await handle.result()
        await save_history(handle, "dismissed_after_slow_page")
    assert result.phase == Phase.DISMISSED
    assert script.actions == []
    assert "healthy again before restart" in next(
        e.reason for e in result.timeline if e.to_phase == Phase.DISMISSED)
    assert webhook_receiver.events()[0] == "emergency"


async def test_a_notify_step_is_not_the_rungs_first_action_on_the_service(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """In a rung [page, failover] the page does not touch the service: when it took long, the
    failover is checked against a fresh probe round like a rung's first action."""
    webhook_receiver.delays["action"] = PROBE_FRESHNESS.total_seconds() + 1
    script = Script()
    script.probe("http", False)
    rung = [{"name": "failover", "steps": [{"action": "page"}, {"action": "failover"}]}]
    policy = scripted_policy(webhook_receiver.url, ladders={"minor": rung, "major": rung, "critical": rung})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.DISMISSED
    assert script.actions == []
    assert webhook_receiver.events() == ["action"]  # the page went out; the failover did not run
    assert "healthy again before failover" in next(
        e.reason for e in result.timeline if e.to_phase == Phase.DISMISSED)


async def test_a_report_arriving_while_the_recovery_ends_starts_the_next_one(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The service fails again while the recovery announces that it recovered: the new report
    joins the run that is ending (signal-with-start), so that run continues as a new recovery
    with it instead of recording it as ignored and losing it."""
    webhook_receiver.delays["recovered"] = 3.0
    script = Script()
    script.probe("http", False)
    restart = [{"name": "restart", "steps": [{"action": "restart"}]}]
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1},
                             ladders={"minor": restart, "major": restart, "critical": restart})
    first = detection(severity=Severity.CRITICAL)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, first)
        first_run = handle.result_run_id
        await eventually(lambda: asyncio.sleep(0.02, "recovered" in webhook_receiver.events()))
        again = detection(severity=Severity.CRITICAL, key=first.incident_key, summary="broken again")
        joined = await start(ts_env.client, queue, policy, again)
        assert joined.id == handle.id and not started_new(joined)
        result = await handle.result()  # follows the run it continued as
        ended = await ts_env.client.get_workflow_handle(handle.id, run_id=first_run).query(
            RecoveryWorkflow.status)
        latest = await ts_env.client.get_workflow_handle(handle.id).describe()
        remembered = await latest.memo_value(REPORTS_MEMO, type_hint=list[str])
    # the run it continued as remembers the first run's report too: a resend of it starts nothing
    assert remembered == [first.detection_id, again.detection_id]
    assert ended.phase == Phase.RECOVERED
    assert any("a new recovery starts with it" in e.reason for e in ended.timeline)
    assert not any(e.kind == "ignored" for e in ended.timeline)
    assert result.phase == Phase.RECOVERED
    assert "broken again" in result.timeline[0].reason
    assert script.actions == ["restart", "restart"]


async def test_critical_with_approval_granted(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", False, False)  # assessment, and the check after the approval
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        status = await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        assert status.pending_decision is not None
        # The command names this run: a late approval copied from an old page cannot approve a
        # step of a newer run with the same workflow id.
        assert status.pending_decision.command.startswith(
            f"medkit approve|abort {handle.id} --run-id {handle.result_run_id} ")
        assert script.actions == []  # nothing runs before the approval
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        assert verdict.accepted and verdict.phase == Phase.EMERGENCY_RECOVERY
        result = await handle.result()
        await save_history(handle, "critical_approved")
    assert result.phase == Phase.RECOVERED
    assert phases(result) == ["Detected", "Assessing", "EmergencyRecovery", "AwaitingApproval",
                              "EmergencyRecovery", "Validating", "Recovered"]
    assert script.actions == ["failover"]
    approved = [e for e in result.timeline if e.kind == "decision"]
    assert approved[0].actor == "alice"
    assert webhook_receiver.events() == ["emergency", "approval_needed", "acknowledged", "recovered"]


async def test_approval_timeout_escalates_then_manual(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, skip_time=True)
        handover = next(i for i, e in enumerate(status.timeline)
                        if e.to_phase == Phase.MANUAL_INTERVENTION)
        gate = [e for e in status.timeline[:handover] if e.kind == "escalation"]
        assert len(gate) == 2  # max_escalations on the approval gate
        assert "no decision on 'failover' after 2 escalations" in status.timeline[handover].reason
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE,
                                      operator("failed over by hand"))
        assert verdict.phase == Phase.RESOLVED
        result = await handle.result()
        await save_history(handle, "approval_timeout_manual")
    assert result.phase == Phase.RESOLVED
    assert script.actions == []
    events = webhook_receiver.events()
    assert events[:4] == ["emergency", "approval_needed", "escalation", "escalation"]
    assert events[4] == "manual_intervention" and events[-1] == "resolved"


async def test_abort_during_remediation_cancels_the_action(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = blocking_script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        await wait_for_phase(handle, Phase.AUTO_REMEDIATION)
        while not script.actions:
            await asyncio.sleep(0.05)
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.ABORT,
                                      operator("wrong service"))
        assert verdict.phase == Phase.ABORTED
        result = await handle.result()
        await save_history(handle, "abort_during_remediation")
        for _ in range(300):  # cancellation arrives with the next heartbeat (about every second)
            if script.cancelled:
                break
            await asyncio.sleep(0.05)
    assert result.phase == Phase.ABORTED
    assert result.timeline[-1].actor == "alice"
    assert "wrong service" in result.timeline[-1].reason
    assert script.cancelled == ["restart"]


async def abort_while_paging(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
    timeout: float, history: str | None = None,
) -> tuple[DecisionVerdict, RecoveryStatus, Script]:
    """Start a critical recovery, abort it while its emergency page takes 5 s to deliver, waiting
    `timeout` seconds for the verdict; the verdict, the final status and the script."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    webhook_receiver.delays["emergency"] = 5.0

    async def paging() -> bool:
        return "emergency" in webhook_receiver.events()

    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        await eventually(paging)
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.ABORT,
                                      operator("false alarm"), timeout=timeout)
        result = await handle.result()
        if history is not None:
            await save_history(handle, history)
    return verdict, result, script


async def test_an_abort_during_the_emergency_page_answers_with_the_phase_it_ends_in(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """An abort accepted while the emergency page is on its way takes effect at the next step
    that watches for it (here the approval gate), after the recovery has passed through
    EmergencyRecovery and AwaitingApproval: the verdict names Aborted, where the recovery ends,
    not the first phase it moved into after the abort."""
    verdict, result, script = await abort_while_paging(ts_env, queue, deps, webhook_receiver,
                                                       timeout=30.0, history="abort_during_page")
    assert result.phase == Phase.ABORTED
    assert phases(result)[-3:] == ["EmergencyRecovery", "AwaitingApproval", "Aborted"]
    assert (verdict.accepted, verdict.phase) == (True, Phase.ABORTED)
    assert verdict.message == "abort accepted; the recovery ended as Aborted"
    assert script.actions == []


async def test_an_abort_accepted_but_not_taken_in_time_says_so_instead_of_no_worker(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The caller's wait ends while the emergency page is still on its way: the recovery
    accepted the abort, so the answer is an accepted verdict naming the phase it is in now and
    saying the abort is not taken yet, not "no worker answered, not applied yet"; the recovery
    then ends Aborted."""
    verdict, result, _ = await abort_while_paging(ts_env, queue, deps, webhook_receiver, timeout=1.0)
    assert verdict.accepted and verdict.phase in (Phase.ASSESSING, Phase.EMERGENCY_RECOVERY)
    assert verdict.message.startswith(f"abort accepted; the recovery, now {verdict.phase.value}, "
                                      "takes it when its current step ends")
    assert result.phase == Phase.ABORTED


async def test_an_action_whose_outcome_is_unknown_hands_over_at_once(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """An action refused with OutcomeUnknown (a retry after a worker died mid-step: it may have
    run) is neither taken for a failed rung nor followed by the next one: the recovery hands
    over to a human at once, saying why."""
    script = Script()
    script.probe("http", then=False)
    script.probe("tcp", then=False)
    script.outcome_unknown.add("restart")
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, skip_time=True)
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator("checked"))
        result = await handle.result()
        await save_history(handle, "outcome_unknown_hands_over")
    assert script.actions == ["restart"], "no further rung ran"
    assert status.attempts == 1
    handover = [e for e in status.timeline
                if e.kind == "transition" and e.to_phase == Phase.MANUAL_INTERVENTION][-1]
    assert handover.reason.startswith("restart may have run and its outcome is unknown")
    assert any(e.kind == "action" and "outcome was not recorded" in e.reason
               for e in status.timeline)
    assert result.phase == Phase.RESOLVED


async def test_max_retries_then_manual_then_resolve(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", then=False)
    script.probe("tcp", then=False)
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, skip_time=True)
        assert status.attempts == 2
        assert status.pending_decision is not None
        assert set(status.pending_decision.allowed) == {"resolve", "retry", "abort"}
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator("fixed DNS"))
        result = await handle.result()
        await save_history(handle, "max_retries_manual_resolve")
    assert result.phase == Phase.RESOLVED
    assert phases(result)[-3:] == ["Validating", "ManualIntervention", "Resolved"]
    assert script.actions == ["restart", "failover"]
    stored = IncidentStore(deps.ledger.engine)  # the workflow kept the incident store current
    detail = stored.detail(stored.find(handle.id))
    assert detail.incident.outcome == "Resolved"
    assert [row.reason for row in detail.timeline] == [e.reason for e in result.timeline]
    assert [(row.operator, row.decision) for row in detail.decisions] == [("alice", "resolve")]


async def test_manual_retry_then_success(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, _ = await handed_over(script, ts_env.client, queue, policy)
        # The operator fixed a dependency; the service needs one more restart (the probe before
        # it still fails), then is healthy.
        script.probe("http", False, then=True)
        script.probe("tcp", then=True)
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.RETRY, operator())
        assert verdict.phase == Phase.GRADUAL_RECOVERY
        result = await handle.result()
        await save_history(handle, "manual_retry_success")
    assert result.phase == Phase.RECOVERED
    assert phases(result)[-4:] == ["ManualIntervention", "GradualRecovery", "Validating", "Recovered"]
    assert script.actions == ["restart", "failover", "restart"]
    assert (result.attempts, result.max_attempts, result.operator_retries) == (1, 2, 1)
    assert len([e for e in result.timeline if e.kind == "decision"]) == 1  # the retry, once


async def test_duplicate_reports_join_the_running_recovery(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", False, False)  # assessment, and the check after the approval
    policy = scripted_policy(webhook_receiver.url)
    first = detection(severity=Severity.CRITICAL, summary="p99 latency high")
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, first)
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        again = detection(severity=Severity.CRITICAL, summary="error rate high", key=first.incident_key)
        joined = await start(ts_env.client, queue, policy, again)
        assert joined.id == handle.id
        assert joined.result_run_id == handle.result_run_id
        status = await handle.query(RecoveryWorkflow.status)
        assert status.reports == 2
        assert any(e.kind == "report" and "error rate high" in e.reason for e in status.timeline)
        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        result = await handle.result()
        await save_history(handle, "duplicate_reports")
    assert result.reports == 2
    assert script.actions == ["failover"]


async def test_wrong_phase_decision_rejected_and_signal_ignored(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", False, False)  # assessment, and the check after the approval
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        before = await eventually(lambda: _notified(handle, "approval_needed"))
        with pytest.raises(DecisionRejected, match="cannot resolve while the recovery is in "
                           "AwaitingApproval; accepted now: approve, abort"):
            await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator())
        after = await handle.query(RecoveryWorkflow.status)
        assert after.phase == before.phase and len(after.timeline) == len(before.timeline)
        await handle.signal(RecoveryWorkflow.retry, operator())
        status = await handle.query(RecoveryWorkflow.status)
        ignored = [e for e in status.timeline if e.kind == "ignored"]
        assert len(ignored) == 1 and "cannot retry" in ignored[0].reason
        assert status.phase == Phase.AWAITING_APPROVAL
        await handle.signal(RecoveryWorkflow.approve, operator("via signal"))
        result = await handle.result()
        await save_history(handle, "wrong_phase_rejected")
        with pytest.raises(DecisionRejected, match="already ended as Recovered"):
            await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator())
    assert result.phase == Phase.RECOVERED


async def test_source_resolved_in_manual_revalidates_and_closes(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, first = await handed_over(script, ts_env.client, queue, policy)
        script.probe("http", then=True)
        script.probe("tcp", then=True)
        resolved = detection(key=first.incident_key, status="resolved", summary="alert cleared")
        await start(ts_env.client, queue, policy, resolved)
        await wait_for_phase(handle, Phase.VALIDATING)
        with pytest.raises(DecisionRejected, match="cannot retry while the recovery is in Validating; "
                                                   "accepted now: abort"):
            await send_decision(ts_env.client, handle.id, DecisionKind.RETRY, operator())
        result = await handle.result()
        await save_history(handle, "source_resolved")
    assert result.phase == Phase.RECOVERED
    assert phases(result)[-3:] == ["ManualIntervention", "Validating", "Recovered"]
    assert any("source reports resolved" in e.reason for e in result.timeline)


@pytest.mark.parametrize(("round_seconds", "timer_count"), [(0.25, 2), (1.2, 0)])
async def test_validation_rounds_are_an_interval_apart_start_to_start(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
    round_seconds: float, timer_count: int,
) -> None:
    """Rounds are due an interval apart from the first round's start: a round's own probing,
    and the workflow task around it, count towards the interval, so each timer is shorter than
    the interval less the round (a timer of exactly 0.75 s would mean the task's time stretched
    the window); a round slower than the interval is followed at once by the next."""
    script = Script()
    script.probe("http", False)
    script.round_seconds = round_seconds
    data = scripted_policy(webhook_receiver.url).model_dump(mode="json")
    data["validation"] = {"samples": 3, "interval": "1s"}
    policy = ServicePolicy.model_validate(data)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        assert (await handle.result()).phase == Phase.RECOVERED
        timers = [
            event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            async for event in handle.fetch_history_events()
            if event.HasField("timer_started_event_attributes")
        ]
    assert len(timers) == timer_count
    assert all(timedelta(0) < timer < timedelta(seconds=1 - round_seconds) for timer in timers)


async def test_healthy_after_the_approval_is_dismissed_without_acting(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The service healed while the approval waited: medkit probes again before acting, runs
    nothing, and ends as Dismissed in the timeline, the search attributes and the store."""
    script = Script()
    script.probe("http", False)  # assessment only; healthy afterwards
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        result = await handle.result()
        await save_history(handle, "dismissed_after_approval")
        described = await handle.describe()
    assert result.phase == Phase.DISMISSED
    assert result.outcome is not None and result.outcome.value == "Dismissed"
    assert script.actions == []
    ended = next(e for e in result.timeline if e.to_phase == Phase.DISMISSED)
    assert "healthy again before failover" in ended.reason
    assert described.typed_search_attributes.get(sa.OUTCOME) == "Dismissed"
    assert described.typed_search_attributes.get(sa.PHASE) == "Dismissed"
    assert webhook_receiver.events() == ["emergency", "approval_needed", "acknowledged", "dismissed"]
    stored = IncidentStore(deps.ledger.engine)
    assert stored.detail(stored.find(handle.id)).incident.outcome == "Dismissed"


async def test_dismiss_when_healthy_ends_a_report_no_probe_confirms(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()  # every probe passes
    policy = scripted_policy(webhook_receiver.url, assessment={"dismiss_when_healthy": True})
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        result = await handle.result()
    assert result.phase == Phase.DISMISSED
    assert phases(result) == ["Detected", "Assessing", "Dismissed"]
    assert "no probe confirms the report" in result.timeline[-1].reason
    assert script.actions == []


async def test_a_report_no_probe_confirms_is_acted_on_by_default(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """Probes that never saw the problem cannot clear it: the detector's report stands."""
    script = Script()  # every probe passes
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        result = await (await start(ts_env.client, queue, policy, detection())).result()
    assert result.phase == Phase.RECOVERED
    assert script.actions == ["restart"]


async def test_a_report_resolved_before_the_approval_is_not_acted_on(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """Every probe passes, so the detector's critical report alone made medkit climb (by
    default it trusts the detector). The detector then reports the problem resolved while the
    failover waits for approval; an operator approves anyway. With the only evidence withdrawn
    and every probe passing, medkit must not fail the service over."""
    script = Script()  # every probe passes
    async with script.worker(ts_env.client, queue, deps):
        handle, _, _ = await _resolved_while_awaiting_approval(ts_env.client, queue, webhook_receiver)
        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        result = await handle.result()
        await save_history(handle, "withdrawn_report_dismissed")
    assert script.actions == [], "acted on a service its probes and its detector call healthy"
    assert result.phase == Phase.DISMISSED
    assert any(e.to_phase == Phase.DISMISSED and e.reason == (
        "resolved, its source says, and healthy before failover: every probe passes; nothing done")
        for e in result.timeline)
    assert any(e.kind == "probe" and e.reason.startswith("the source reported the problem resolved")
               for e in result.timeline)


async def test_a_report_firing_again_after_its_resolution_is_acted_on(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """Only the source's latest word counts: resolved, then firing again before the approval,
    the report stands once more and the approved failover runs (every probe still passes)."""
    script = Script()  # every probe passes
    async with script.worker(ts_env.client, queue, deps):
        handle, policy, key = await _resolved_while_awaiting_approval(ts_env.client, queue,
                                                                      webhook_receiver)
        await start(ts_env.client, queue, policy, detection(key=key, summary="firing again"))
        await eventually(lambda: _reports_counted(handle, 3))
        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        result = await handle.result()
    assert script.actions == ["failover"]
    assert result.phase == Phase.RECOVERED


async def _resolved_while_awaiting_approval(
    client: Client, queue: str, webhook_receiver: WebhookReceiver,
) -> tuple[WorkflowHandle[RecoveryWorkflow, RecoveryStatus], ServicePolicy, str]:
    """A critical recovery whose failover waits for approval, and whose source then reported
    the problem resolved (taken by the run); its handle, policy and incident key."""
    policy = scripted_policy(webhook_receiver.url)
    first = detection(severity=Severity.CRITICAL)
    handle = await start(client, queue, policy, first)
    await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
    await start(client, queue, policy,
                detection(key=first.incident_key, status="resolved", summary="alert cleared"))
    await eventually(lambda: _resolved_seen(handle))
    return handle, policy, first.incident_key


async def _resolved_seen(handle: WorkflowHandle[Any, Any]) -> bool:
    status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
    return status.source_resolved


async def _reports_counted(handle: WorkflowHandle[Any, Any], reports: int) -> bool:
    status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
    return status.reports == reports


async def test_a_resent_report_is_counted_once_and_the_store_keeps_counting(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """Reports are idempotent on detection id (an alert resent after a failed delivery counts
    once), and the store's report count keeps up past the timeline's hundred listed reports."""
    script = Script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, first = await handed_over(script, ts_env.client, queue, policy)
        again = detection(key=first.incident_key, summary="resent")
        for _ in range(3):
            await handle.signal(RecoveryWorkflow.report, again)
        await handle.signal(RecoveryWorkflow.report, first)
        status = await handle.query(RecoveryWorkflow.status)
        assert status.reports == 2
        batches = [ReportBatch(detections=[detection(key=first.incident_key) for _ in range(60)])
                   for _ in range(2)]
        for batch in [*batches, batches[0]]:  # the first batch is resent
            await handle.signal(RecoveryWorkflow.report_batch, batch)
        assert (await handle.query(RecoveryWorkflow.status)).reports == 122
        stored = IncidentStore(deps.ledger.engine)

        async def stored_reports() -> bool:
            return stored.detail(stored.find(handle.id)).incident.reports == 122

        await eventually(stored_reports)
        await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator())
        await handle.result()
