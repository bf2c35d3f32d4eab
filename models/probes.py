"""Probe definitions (what to check) and probe results (what was seen)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from models.base import Duration, MedkitModel, Name


class HttpProbe(MedkitModel):
    """An HTTP request whose status, latency and optionally body decide health."""

    kind: Literal["http"] = "http"
    name: Name = "http"
    url: Annotated[str, Field(pattern=r"^https?://")]
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200], min_length=1
    )
    timeout: Duration = timedelta(seconds=2)
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    body_contains: str | None = None


class TcpProbe(MedkitModel):
    """A TCP connect: healthy when the port accepts a connection within the timeout."""

    kind: Literal["tcp"] = "tcp"
    name: Name = "tcp"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    timeout: Duration = timedelta(seconds=2)


class ProcessProbe(MedkitModel):
    """A local process, found by pid file or by name, alive and within CPU and memory limits."""

    kind: Literal["process"] = "process"
    name: Name = "process"
    pid_file: str | None = None
    process_name: str | None = None
    max_cpu_percent: Annotated[float, Field(gt=0)] | None = None
    max_rss_mb: Annotated[float, Field(gt=0)] | None = None
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _one_locator(self) -> ProcessProbe:
        if (self.pid_file is None) == (self.process_name is None):
            raise ValueError("set exactly one of pid_file or process_name")
        return self


ProbeSpec = Annotated[HttpProbe | TcpProbe | ProcessProbe, Field(discriminator="kind")]
"""Any probe a policy can name, selected by its `kind`."""

PROBE_ACTIVITY: dict[str, str] = {
    "http": "probe_http",
    "tcp": "probe_tcp",
    "process": "probe_process",
}
"""The activity that runs each probe kind."""


class ProbeRequest(MedkitModel):
    """The single argument of every probe activity."""

    service: Name
    spec: ProbeSpec


class ProbeResult(MedkitModel):
    """What one probe saw. Unhealthy is a result, not an error."""

    probe: str
    kind: str
    healthy: bool
    detail: str
    latency_ms: float | None = None
    observed: dict[str, float | int | str | None] = Field(default_factory=dict)
    failure: Literal["unreachable", "bad_status", "slow", "body_mismatch", "process_down",
                     "resource_limit", "error"] | None = None
    at: datetime

    def evidence(self) -> str:
        """One line for the timeline and the UI."""
        state = "healthy" if self.healthy else "UNHEALTHY"
        latency = f" in {self.latency_ms:.0f} ms" if self.latency_ms is not None else ""
        return f"{self.probe} ({self.kind}) {state}{latency}: {self.detail}"
