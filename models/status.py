"""What a recovery reports about itself: its status query result and timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from models.base import MedkitModel
from models.phases import DecisionKind, Outcome, Phase, Severity

TimelineKind = Literal[
    "transition", "report", "decision", "ignored", "action", "probe", "escalation", "notification",
    "safety",
]


class TimelineEntry(MedkitModel):
    """One recorded event. For a transition `from`/`to` differ; for other kinds both are the phase."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True
    )

    at: datetime
    from_phase: Phase = Field(alias="from")
    to_phase: Phase = Field(alias="to")
    reason: str
    actor: str
    kind: TimelineKind = "transition"


ClosedByTemporal = Literal["terminated", "cancelled", "timed out", "failed"]
"""How a recovery's run can be ended in Temporal other than by its own code (which ends it with
an outcome: Recovered, Resolved, ...)."""


class PendingDecision(MedkitModel):
    """A decision the recovery is waiting for, with the exact command that gives it."""

    kind: Literal["approval", "manual"]
    allowed: list[DecisionKind]
    step: str | None = None
    since: datetime
    deadline: datetime | None = None
    command: str


class RecoveryStatus(MedkitModel):
    """The `status` query result, and the workflow's result once it has ended."""

    workflow_id: str
    service: str
    incident_key: str
    phase: Phase
    severity: Severity | None = None
    category: str | None = None
    evidence: list[str] = Field(default_factory=list)
    current_step: str | None = None
    attempts: int = 0
    max_attempts: int
    operator_retries: int = 0
    escalations: int = 0
    reports: int = 1
    dry_run: bool = False
    source_resolved: bool = False
    pending_decision: PendingDecision | None = None
    outcome: Outcome | None = None
    started_at: datetime
    timeline: list[TimelineEntry] = Field(default_factory=list)
    closed_by_temporal: ClosedByTemporal | None = None
    """Set by the client reading the status (never by the workflow, which cannot know) when the
    run was ended in Temporal, say terminated in its UI: `phase` is then the last one it reached,
    `outcome` stays None and no decision is pending, since it takes none."""
