"""Request and response bodies of the gateway's own endpoints (the OpenAPI contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from models.base import NAME_PATTERN
from models.phases import Phase, Severity

WORKFLOW_ID_PATTERN = r"^recovery:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}:[A-Za-z0-9_.-]{1,100}$"
"""A recovery's workflow id, `recovery:<service>:<incident key>`; nothing else is addressable."""

IngestOutcome = Literal["started", "joined", "resolved_reported", "no_recovery", "superseded"]
"""started: a new recovery; joined: reported to the running one; resolved_reported: a resolved
report signalled; no_recovery: resolved but nothing was running (ignored); superseded: a
resolved alert in a batch that also reports the same incident firing (ignored)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectionIn(_Body):
    """A detection from any detector or script."""

    service: Annotated[str, Field(pattern=NAME_PATTERN, description="service name from the policy")]
    severity: Severity | None = Field(default=None, description="severity floor; assessment may raise it")
    summary: Annotated[str, Field(max_length=2000)] = ""
    incident_key: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default="health", description="reports with the same key join one recovery")
    labels: dict[Annotated[str, Field(max_length=200)], Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=dict, max_length=64)
    status: Literal["firing", "resolved"] = "firing"
    detection_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="set it to make retries recognisable; generated when omitted")
    detected_at: datetime | None = Field(default=None, description="defaults to the time received")


class IngestResult(_Body):
    """What happened to one detection."""

    workflow_id: str
    outcome: IngestOutcome
    fingerprint: str | None = None


class BatchResult(_Body):
    """Every alert of an Alertmanager notification was accepted."""

    accepted: int
    results: list[IngestResult]


class DecisionIn(_Body):
    """An operator decision: who and why (the time is stamped by the gateway)."""

    operator: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(max_length=2000)] = ""


class RecoveryListItem(_Body):
    """One row of the recovery listing."""

    workflow_id: str
    service: str | None
    phase: Phase | str | None
    severity: str | None
    outcome: str | None
    running: bool
    started_at: str


class ErrorBody(_Body):
    """Every error: one precise line, plus per-field errors for a malformed body."""

    detail: str
    errors: list[dict[str, object]] | None = None


class PointIn(_Body):
    """One point of a pushed series."""

    timestamp: datetime = Field(description="ISO 8601 (UTC when no offset is given) or Unix seconds")
    value: Annotated[float, Field(strict=True, allow_inf_nan=False, description="a finite number")]


MAX_POINTS = 10_000
"""Points in one request; more must be split into several batches (in time order)."""


class PointsIn(RootModel[Annotated[list[PointIn], Field(min_length=1, max_length=MAX_POINTS)]]):
    """A batch of points in strictly increasing time order; a single point object is accepted too."""

    @model_validator(mode="before")
    @classmethod
    def _one_point(cls, data: object) -> object:
        return [data] if isinstance(data, dict) else data


class ScoredPoint(_Body):
    """One point's score, and the recovery its detection went to when it fired."""

    timestamp: datetime
    score: float
    fired: bool
    workflow_id: str | None = None
    outcome: IngestOutcome | None = None


class SeriesResult(_Body):
    """Every point of the batch was scored and is now part of the series' history."""

    series: str
    accepted: int
    detections: int
    points: list[ScoredPoint]
