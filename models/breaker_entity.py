"""The durable breaker entity's state, settings, and the reports and commands it accepts.

One `BreakerEntityWorkflow` per breaker name (`breaker:<name>`) holds a circuit breaker's state
for a whole fleet: every process reports its calls' outcomes to it, and its open time is a
durable timer, so the state survives worker restarts and is the same for every reader.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field

from models.base import Duration, MedkitModel, Name

EntityState = Literal["closed", "open", "half_open", "ramping"]

MAX_TRANSITIONS_KEPT = 20
"""Transitions the entity remembers (the newest), so its state stays small across continue-as-new."""


class BreakerEntitySettings(MedkitModel):
    """How the entity trips and recovers."""

    name: Name
    failure_threshold: Annotated[int, Field(ge=1, le=10_000)] = 5
    """Reported failures in a row that open the breaker."""
    open_for: Duration = timedelta(seconds=30)
    """How long it stays open before letting trial calls through (half-open)."""
    half_open_successes: Annotated[int, Field(ge=1, le=1000)] = 3
    """Successful trial reports that move it on to the ramp; one failed trial reopens it."""
    trial_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    """The share of calls followers admit as trials while it is half-open."""
    ramp_for: Duration = timedelta(seconds=60)
    """How long the traffic ramp after half-open lasts; 0 closes straight after the trials."""
    ramp_steps: Annotated[int, Field(ge=1, le=100)] = 4
    """Equal steps of the ramp, each a durable timer: 4 admits 25 %, 50 %, 75 %, 100 %, then closes."""
    reports_per_run: Annotated[int, Field(ge=1, le=100_000)] = 2000
    """Reports one run handles before continuing as new, keeping its history short."""


class BreakerTransition(MedkitModel):
    """One change of state, with the workflow time it happened and why."""

    at: datetime
    from_state: EntityState
    to_state: EntityState
    reason: Annotated[str, Field(max_length=500)]


class BreakerEntityState(MedkitModel):
    """The workflow's single argument and its status: carried whole across continue-as-new."""

    settings: BreakerEntitySettings
    state: EntityState = "closed"
    consecutive_failures: int = 0
    trial_successes: int = 0
    open_until: datetime | None = None
    ramp_step: int = 0
    """The ramp's current step (1..ramp_steps) while ramping, else 0."""
    next_step_at: datetime | None = None
    """When the ramp moves to its next step (or closes after the last) while ramping."""
    traffic_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0
    """The share of calls to admit now: 1.0 closed, 0.0 open, `trial_fraction` half-open, the
    ramp step's share while ramping."""
    reports: int = 0
    """Reports handled by this run (reset when continuing as new)."""
    transitions: list[BreakerTransition] = Field(default_factory=list)


class OutcomeReport(MedkitModel):
    """A call's outcome, as one process saw it (signal `report`)."""

    reporter: Annotated[str, Field(min_length=1, max_length=200)]
    success: bool
    detail: Annotated[str, Field(max_length=500)] = ""


class BreakerCommand(MedkitModel):
    """An operator's decision (update `command`): open or close now, whatever the reports say."""

    action: Literal["trip", "reset"]
    operator: Annotated[str, Field(min_length=1, max_length=200)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]


def breaker_workflow_id(name: str) -> str:
    """The entity's workflow id: one per breaker name."""
    return f"breaker:{name}"
