"""Paths of the recovery state machine no other test takes, on the time-skipping server.

Probes and actions are scripted by activity name (tests/scripted.py); notifications are real
HTTP posts to a local receiver, which a test can hold to keep the recovery on one step.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.decisions import OperatorDecision
from models.phases import DecisionKind, Phase, Severity
from models.status import RecoveryStatus
from tests.conftest import WebhookReceiver, eventually
from tests.scripted import (
    Script,
    detection,
    handed_over,
    phases,
    scripted_policy,
    skip_virtual_time,
    start,
)
from workers.client import DecisionRejected, send_decision
from workflows.recovery import RecoveryWorkflow


def operator(reason: str = "looked at it") -> OperatorDecision:
    """A decision by the on-call engineer."""
    return OperatorDecision(operator="alice", reason=reason, at=datetime.now(UTC))


async def test_manual_intervention_escalates_to_the_limit_then_waits_without_a_deadline(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """A recovery left in ManualIntervention escalates every `escalation.after`, up to
    `max_escalations` times, then waits for a human with no next escalation (no deadline) for
    as long as it takes, and still takes a decision. Pins the timer of the human wait: it
    escalates, and it stops at the limit instead of paging forever."""
    script = Script()
    policy = scripted_policy(webhook_receiver.url)  # escalation every 5m, at most 2
    async with script.worker(ts_env.client, queue, deps):
        handle, _ = await handed_over(script, ts_env.client, queue, policy)

        async def escalated(count: int) -> RecoveryStatus | None:
            await skip_virtual_time(ts_env.client, timedelta(minutes=1))
            status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
            return status if status.escalations >= count else None

        await eventually(lambda: escalated(2))
        await skip_virtual_time(ts_env.client, timedelta(hours=1))  # 12 more periods of 5m
        status = await handle.query(RecoveryWorkflow.status)
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator("did it"))
        result = await handle.result()
    assert status.phase == Phase.MANUAL_INTERVENTION
    assert status.escalations == 2
    reason = next(e for e in reversed(status.timeline) if e.kind == "transition").reason
    assert [e.reason for e in status.timeline if e.kind == "escalation"] == [
        f"escalation {n}: still in ManualIntervention: {reason}" for n in (1, 2)]
    assert status.pending_decision is not None and status.pending_decision.deadline is None
    assert webhook_receiver.events().count("escalation") == 2
    assert result.phase == Phase.RESOLVED


async def test_a_resolved_report_that_fails_revalidation_returns_to_manual_with_its_decisions(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """The source reports the problem resolved while a human is awaited, but medkit's own
    probes still fail: the recovery goes back to ManualIntervention, saying so, and offers its
    decisions again (they are held while it validates). Pins the failed revalidation: neither
    closed on the source's word nor left without a way for the operator to decide."""
    script = Script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle, first = await handed_over(script, ts_env.client, queue, policy)
        await start(ts_env.client, queue, policy,
                    detection(key=first.incident_key, status="resolved", summary="alert cleared"))

        async def back_in_manual() -> RecoveryStatus | None:
            status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
            back = any(e.reason.startswith("still unhealthy after source resolved")
                       for e in status.timeline)
            return status if back and status.phase == Phase.MANUAL_INTERVENTION else None

        status = await eventually(back_in_manual)
        assert status.pending_decision is not None
        assert status.pending_decision.allowed == [DecisionKind.RESOLVE, DecisionKind.RETRY,
                                                   DecisionKind.ABORT]
        verdict = await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE,
                                      operator("fixed the database"))
        result = await handle.result()
    assert phases(status)[-3:] == ["ManualIntervention", "Validating", "ManualIntervention"]
    assert any(e.kind == "probe" and e.reason.startswith("validation failed")
               for e in status.timeline[-3:])
    assert not status.source_resolved
    assert verdict.phase == Phase.RESOLVED
    assert result.phase == Phase.RESOLVED


async def test_a_decision_after_an_abort_signal_is_refused_while_the_abort_takes_effect(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """An abort sent as a signal is accepted at once, but takes effect only at the next step
    that watches for it; a decision sent meanwhile (here while the emergency page is held on
    its way) is refused as "being aborted", not taken, and a second abort signal is recorded
    as ignored. Pins the abort signal and the refusal of decisions while an abort is pending."""
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    paging, release = threading.Event(), threading.Event()

    def hold_the_page() -> None:
        if webhook_receiver.events()[-1] == "emergency":
            paging.set()
            release.wait(60)

    webhook_receiver.on_post = hold_the_page
    try:
        async with script.worker(ts_env.client, queue, deps):
            handle = await start(ts_env.client, queue, policy,
                                 detection(severity=Severity.CRITICAL))
            assert await asyncio.to_thread(paging.wait, 30)
            await handle.signal(RecoveryWorkflow.abort, operator("false alarm"))

            async def abort_taken() -> bool:
                status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
                return any(e.kind == "decision" for e in status.timeline)

            await eventually(abort_taken)
            with pytest.raises(DecisionRejected, match="cannot approve: the recovery is being "
                                                       "aborted"):
                await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
            await handle.signal(RecoveryWorkflow.abort, operator("again"))
            status = await handle.query(RecoveryWorkflow.status)
            release.set()
            result = await handle.result()
    finally:
        release.set()
    assert [e.reason for e in status.timeline if e.kind == "decision"] == [
        "abort (signal): false alarm"]
    assert [e.reason for e in status.timeline if e.kind == "ignored"] == [
        "ignored signal: cannot abort: the recovery is being aborted"]
    assert result.phase == Phase.ABORTED
    assert any(e.to_phase == Phase.ABORTED and e.reason == "aborted: false alarm"
               for e in result.timeline)
    assert script.actions == []
