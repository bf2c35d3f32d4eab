"""Request and response bodies of the gateway's own endpoints (the OpenAPI contract)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, model_validator

from detectors.anomaly import MAX_MAGNITUDE
from models.base import NAME_PATTERN
from models.phases import Phase, Severity

WORKFLOW_ID_PATTERN = r"^recovery:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}:[A-Za-z0-9_.-]{1,100}$"
"""A recovery's workflow id, `recovery:<service>:<incident key>`; nothing else is addressable."""

MAX_LABELS = 64
"""Labels of one detection (or one Alertmanager alert) at most."""

MAX_LABEL_NAME = 200
"""Characters of a label name at most."""

MAX_LABEL_VALUE = 2000
"""Characters of a label value at most. Labels travel into the recovery (its input, its signals,
the timeline), so they are bounded here, at the edge, where the sender can be told (422) instead
of Temporal refusing an oversized payload later."""

Labels = dict[Annotated[str, Field(max_length=MAX_LABEL_NAME)],
              Annotated[str, Field(max_length=MAX_LABEL_VALUE)]]
"""A detection's labels: bounded names and values (the count is bounded where it is used)."""

def in_utc(at: datetime) -> datetime:
    """The same instant in UTC (a time without offset is taken as UTC); a ValueError, which is a
    422 naming the field, for a time whose UTC form is outside the calendar (year 1 at +05:00)."""
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time in UTC is outside years 1-9999") from None


UtcTime = Annotated[datetime, AfterValidator(in_utc)]
"""A timestamp normalised to UTC at the edge, so nothing later can overflow converting it."""


IngestOutcome = Literal["started", "joined", "repeat", "resolved_reported", "no_recovery",
                        "superseded"]
"""started: a new recovery; joined: reported to the running one; repeat: a report the
recovery's ended latest run already counted (an alert resent after the recovery ended), so
nothing started; resolved_reported: a resolved report signalled; no_recovery: resolved but
nothing was running (ignored); superseded: a resolved alert in a batch that also reports the
same incident firing (ignored)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectionIn(_Body):
    """A detection from any detector or script."""

    service: Annotated[str, Field(pattern=NAME_PATTERN, description="service name from the policy")]
    severity: Severity | None = Field(default=None, description="severity floor; assessment may raise it")
    summary: Annotated[str, Field(max_length=2000)] = ""
    incident_key: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default="health", description="reports with the same key join one recovery")
    labels: Labels = Field(default_factory=dict, max_length=MAX_LABELS)
    status: Literal["firing", "resolved"] = "firing"
    detection_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="set it to make retries recognisable; generated when omitted")
    detected_at: UtcTime | None = Field(default=None, description="defaults to the time received")


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


class BreakerReportResult(_Body):
    """Where an outcome report went: the entity's workflow id, and whether the report started it."""

    workflow_id: str
    started: bool


class ErrorBody(_Body):
    """Every error: one precise line, plus per-field errors for a malformed body."""

    detail: str
    errors: list[dict[str, object]] | None = None


def _plausible(value: float) -> float:
    """Refuse magnitudes beyond the detector's bound (1e100): no real metric comes near it, and
    such a value would dominate the series' statistics for thousands of points."""
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError(f"{value:g} is beyond the largest magnitude a series value may have "
                         f"({MAX_MAGNITUDE:g})")
    return value


class PointIn(_Body):
    """One point of a pushed series."""

    timestamp: datetime = Field(description="ISO 8601 (UTC when no offset is given) or Unix seconds")
    value: Annotated[float, Field(strict=True, allow_inf_nan=False,
                                  description="a finite number, at most 1e100 in magnitude"),
                     AfterValidator(_plausible)]


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
