"""Health scores: what the health poller concludes about each service and the fleet, 0-100.

The formula lives in `detectors.health_poller` (`probe_score`, `HealthBoard`) and is documented
in docs/dashboard.md; these models are what `GET /v1/health` and the dashboard show.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from models.base import MedkitModel


class HealthStatus(StrEnum):
    """A service's (or the fleet's) condition, from best to worst; unknown before any probe round."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


STATUS_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.DEGRADED: 2,
               HealthStatus.UNHEALTHY: 3}
"""Worse is higher: the fleet takes its worst service's status (unknown counts above healthy, so
a fleet with an unprobed service never claims to be all healthy)."""


class ProbeHealth(MedkitModel):
    """One probe of the latest round, with the score it earned."""

    probe: str
    kind: str
    healthy: bool
    score: float = Field(ge=0, le=100)
    latency_ms: float | None = None
    threshold_ms: float | None = Field(default=None,
                                       description="latency budget the score is measured against")
    detail: str


class ServiceHealth(MedkitModel):
    """One service's score over its recent probe rounds, and the status the score maps to."""

    service: str
    status: HealthStatus
    score: float | None = Field(default=None, ge=0, le=100, description="None before the first round")
    rounds: int = Field(default=0, ge=0, description="rounds in the scoring window")
    failing_rounds: int = Field(default=0, ge=0, description="consecutive failed rounds now")
    failure_threshold: int = Field(ge=1)
    last_round_at: datetime | None = None
    probes: list[ProbeHealth] = Field(default_factory=list)


class FleetHealth(MedkitModel):
    """Every polled service's health, and the fleet's: its worst status and its lowest score."""

    status: HealthStatus
    score: float | None = Field(default=None, ge=0, le=100)
    window: int = Field(ge=1, description="probe rounds each service's score averages over")
    services: list[ServiceHealth] = Field(default_factory=list)
