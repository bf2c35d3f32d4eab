"""Replay saved histories of every state-machine path: a nondeterministic change fails here.

Regenerate deliberately after an intended workflow change with `make histories`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow

HISTORIES = Path(__file__).parent / "histories"
EXPECTED = {
    "minor_success", "major_second_rung", "critical_approved", "approval_timeout_manual",
    "abort_during_remediation", "max_retries_manual_resolve", "manual_retry_success",
    "duplicate_reports", "wrong_phase_rejected", "source_resolved", "local_actions",
    "dismissed_after_approval", "dismissed_after_slow_page", "abort_during_page",
    "abort_while_lease_requested",
}
FLEET = {"fleet_check_after_continue_as_new"}
"""Fleet coordinator runs (tests/test_fleet_coordinator.py)."""


def test_every_path_has_a_saved_history() -> None:
    assert {p.stem for p in HISTORIES.glob("*.json")} >= EXPECTED | FLEET


@pytest.mark.parametrize("name", sorted(EXPECTED | FLEET))
async def test_replay(name: str) -> None:
    history = WorkflowHistory.from_json(name, (HISTORIES / f"{name}.json").read_text())
    replayer = Replayer(workflows=[RecoveryWorkflow, FleetCoordinatorWorkflow],
                        data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
