"""What the Temporal UI shows for a recovery, read the way the UI reads it (real time-skipping server).

The static summary is fixed at start (Temporal cannot update it); the current details, which the
UI fetches with the built-in `__temporal_workflow_metadata` query, open with a one-line story
that follows the recovery, then say why, what was tried, what it waits for, who was paged, and
give one pasteable `medkit` command per decision the recovery accepts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.decisions import OperatorDecision
from models.phases import DecisionKind, Phase, Severity
from tests.conftest import WebhookReceiver, eventually, stop_fleet_coordinator
from tests.scripted import Script, detection, scripted_policy, start, wait_for_phase
from workers.client import send_decision


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """The current details, through the same built-in query the Temporal UI sends."""
    metadata: WorkflowMetadata = await handle.query("__temporal_workflow_metadata",
                                                    result_type=WorkflowMetadata)
    return metadata.current_details


def operator() -> OperatorDecision:
    """A decision by the on-call engineer."""
    return OperatorDecision(operator="alice", reason="checked the dashboards", at=datetime.now(UTC))


async def test_details_tell_the_approval_story_and_the_summary_stays_as_started(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = Script()
    script.probe("http", False, False)  # assessment, and the check before the approved action
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)

        async def paged() -> str | None:
            text = await current_details(handle)
            return text if "oncall (approval_needed)" in text else None

        waiting = await eventually(paged, timeout=30)
        story, *rest = waiting.split("\n\n")
        assert story == "checkout: AwaitingApproval · critical unhealthy · attempt 1/2 · " \
                        "waiting for approve or abort"
        assert "**Why:** 1 of 2 probes failing" in waiting
        assert "**Waiting since:** " in waiting and " for approval of failover" in waiting
        assert "**Next escalation:** " in waiting and "(escalate if still undecided)" in waiting
        assert "**Paged:** oncall (approval_needed)" in waiting
        for kind in ("approve", "abort"):
            assert (f"- `medkit {kind} {handle.id} --operator \"$USER\" --reason \"...\"`"
                    in rest)
        assert "medkit resolve" not in waiting

        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        result = await handle.result()
        ended = await current_details(handle)
    assert result.phase == Phase.RECOVERED
    assert ended.split("\n\n")[0] == "checkout: Recovered · critical unhealthy · attempt 1/2"
    assert "**Tried:**" in ended and "failover: scripted command" in ended
    assert "**Outcome:** Recovered" in ended
    assert "**Decide:**" not in ended and "**Stop it:**" not in ended


async def test_details_warn_when_nobody_can_be_paged_and_offer_every_manual_decision(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps
) -> None:
    script = Script()
    script.probe("http", then=False)  # every round fails one probe: minor, validation never passes
    policy = scripted_policy(
        "http://127.0.0.1:9", routes={},
        actions={"restart": {"kind": "restart_process", "argv": ["true"],
                             "pid_file": "/tmp/x.pid"}},
        ladders={level: [{"name": "restart", "steps": [{"action": "restart"}]}]
                 for level in ("minor", "major", "critical")},
        escalation={"after": "5m", "max_escalations": 1, "routes": []},
    )
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection())
        await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, skip_time=True)
        text = await current_details(handle)
        await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator())
        await handle.result()
    lines = text.split("\n\n")
    assert lines[0] == "checkout: ManualIntervention · minor unhealthy · attempt 2/2 · " \
                       "waiting for resolve or retry or abort"
    assert "**Why a human:** all 2 attempts failed validation" in text
    assert "**Paged:** ⚠ nobody: this service's policy has no escalation routes" in text
    tried = [line for line in lines if line.startswith("- ") and "restart" in line]
    assert len(tried) == 2 and all("restart: scripted restart_process" in t for t in tried)
    assert any("validation failed" in line for line in lines)
    for kind in ("resolve", "retry", "abort"):
        assert f"- `medkit {kind} {handle.id} --operator \"$USER\" --reason \"...\"`" in lines


async def test_static_summary_is_fixed_and_the_details_first_line_carries_the_assessment(
    dev_env: WorkflowEnvironment, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    """On the dev server (the time-skipping server keeps no user metadata): the summary the UI
    lists still says "unassessed" after assessment, as Temporal cannot update it; the first line
    of the current details says what the assessment found."""
    queue = f"ui-{uuid.uuid4().hex[:8]}"
    script = Script()
    script.probe("http", False)
    policy = scripted_policy(webhook_receiver.url)
    try:
        async with script.worker(dev_env.client, queue, deps):
            handle = await start(dev_env.client, queue, policy, detection())
            result = await handle.result()
            summary = await (await handle.describe()).static_summary()
            story = (await current_details(handle)).split("\n\n")[0]
    finally:
        await stop_fleet_coordinator(dev_env.client, queue)
    assert result.phase == Phase.RECOVERED
    assert summary == "checkout: checkout is failing (unassessed)"
    assert story == "checkout: Recovered · minor unhealthy · attempt 1/2"
