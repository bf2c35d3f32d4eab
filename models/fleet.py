"""Fleet-wide safety rails: per-service exclusivity and the blast-radius cap, as leases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field

from models.base import Duration, MedkitModel, Name


def coordinator_workflow_id(task_queue: str) -> str:
    """The one fleet coordinator of a task queue (the workers of one medkit deployment)."""
    return f"medkit-fleet-coordinator:{task_queue}"


class FleetSpec(MedkitModel):
    """Limits on how much of the fleet may be in remediation at once.

    When more than `max_services` services, or more than `max_percent` of the fleet, would be
    remediating at the same time, a new recovery holds at assessment and pages a human instead
    of acting: a storm usually has one shared cause that restarts will not fix.
    """

    max_services: Annotated[int, Field(ge=1)] | None = None
    max_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    fleet_size: Annotated[int, Field(ge=1)] = 1
    reap_interval: Duration = timedelta(minutes=1)


class BudgetSpec(MedkitModel):
    """At most `max_actions` runs of the named actions per rolling `window`, across incidents.

    Counted per activity type from the action ledger, so two actions of the same kind (say two
    restart_process actions) share one budget. A step that would exceed it is not run.
    """

    actions: list[Name] = Field(min_length=1)
    max_actions: Annotated[int, Field(ge=0)]
    window: Duration = timedelta(hours=1)


class LeaseRequest(MedkitModel):
    """A recovery asks to act on its service."""

    request_id: str
    service: Name
    workflow_id: str
    run_id: str
    task_queue: str
    limits: FleetSpec


class LeaseDecision(MedkitModel):
    """The coordinator's answer: the lease request's update result, and signalled later to a
    queued recovery when its turn comes."""

    request_id: str
    verdict: Literal["granted", "queued", "held"]
    reason: str
    active: list[str] = Field(default_factory=list)


class LeaseRelease(MedkitModel):
    """A recovery is done acting on its service (sent to the coordinator of `task_queue`)."""

    service: Name
    workflow_id: str
    run_id: str
    task_queue: str


class ClosedCheck(MedkitModel):
    """Which of these recoveries (workflow id, run id) are no longer running."""

    runs: list[tuple[str, str]]


class FleetState(MedkitModel):
    """The coordinator's whole state, carried across continue-as-new.

    `next_check` is when the holders are next checked (None while nobody holds or waits). It is
    carried too: a coordinator that continues as new more often than `reap_interval` would
    otherwise restart the wait each time and never check."""

    holders: dict[str, LeaseRequest] = Field(default_factory=dict)
    waiting: dict[str, list[LeaseRequest]] = Field(default_factory=dict)
    limits: FleetSpec = Field(default_factory=FleetSpec)
    next_check: datetime | None = None
