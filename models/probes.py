"""Probe definitions (what to check) and probe results (what was seen)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_serializer, model_validator

from models.base import Duration, EnvName, MedkitModel, Name
from models.urls import PolicyUrl

Group = Name | None
"""The probe's group (e.g. `instances`): assessment rules can select every probe of a group."""

SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE
)
"""Variable names that suggest a secret value: refused in a policy's `env`, and their values on
the worker are redacted from child output (activities/child_env.py)."""


def _no_secret_env(env: dict[str, str]) -> dict[str, str]:
    """Refuse variables named like secrets: the policy travels in every workflow's history, in
    clear. The error names them, never their values."""
    refused = sorted(name for name in env if SECRET_NAME.search(name))
    if refused:
        raise ValueError(
            f"variable(s) {', '.join(refused)} look like secrets and must not be written in the "
            "policy (it is stored in every workflow's history); set them in the worker's "
            "environment and name them in inherit_env")
    return env


ChildEnv = Annotated[dict[EnvName, str], AfterValidator(_no_secret_env)]
"""Variables set for a program medkit starts. Written in the policy, so never secrets: one named
like a secret (`SECRET_NAME`) is refused."""

InheritEnv = list[EnvName]
"""Names of worker variables a program medkit starts is given on purpose (it gets only a small
non-secret allowlist otherwise, see activities/child_env.py); their values stay on the worker."""


class HttpProbe(MedkitModel):
    """An HTTP request whose status, latency and optionally body decide health."""

    kind: Literal["http"] = "http"
    name: Name = "http"
    group: Group = None
    url: PolicyUrl
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
    group: Group = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    timeout: Duration = timedelta(seconds=2)


class ProcessProbe(MedkitModel):
    """A local process, found by pid file or by name, alive and within CPU and memory limits."""

    kind: Literal["process"] = "process"
    name: Name = "process"
    group: Group = None
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


ComparisonOp = Literal[">", ">=", "<", "<=", "==", "!="]
_COMPARISON_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


class Comparison(MedkitModel):
    """`op threshold`, written `"> 0.05"` in a policy; `holds(value)` applies it (NaN never holds)."""

    op: ComparisonOp
    threshold: Annotated[float, Field(allow_inf_nan=False)]

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, str):
            match = _COMPARISON_RE.match(data)
            if match is None:
                raise ValueError(
                    f"invalid comparison {data!r}: write an operator (> >= < <= == !=) and a number, "
                    "e.g. '> 0.05'"
                )
            return {"op": match.group(1), "threshold": match.group(2)}
        return data

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        number = int(self.threshold) if self.threshold.is_integer() else self.threshold
        return f"{self.op} {number!r}"

    def holds(self, value: float) -> bool:
        """Whether `value op threshold` is true."""
        if math.isnan(value):
            return False
        return {
            ">": value > self.threshold, ">=": value >= self.threshold,
            "<": value < self.threshold, "<=": value <= self.threshold,
            "==": value == self.threshold, "!=": value != self.threshold,
        }[self.op]


class PrometheusProbe(MedkitModel):
    """A PromQL instant query; unhealthy when its value meets `unhealthy_when` (like an alert rule).

    Several series: `match: any` (default) is unhealthy when any series meets the condition,
    `all` when every series does. No series: `empty` decides (default healthy, as an alert rule
    that returns nothing does not fire).
    """

    kind: Literal["prometheus"] = "prometheus"
    name: Name = "prometheus"
    group: Group = None
    url: PolicyUrl
    query: Annotated[str, Field(min_length=1)]
    unhealthy_when: Comparison
    match: Literal["any", "all"] = "any"
    empty: Literal["healthy", "unhealthy"] = "healthy"
    timeout: Duration = timedelta(seconds=5)


class HostProbe(MedkitModel):
    """This host's CPU, memory, disk and load, each against an optional maximum (at least one set)."""

    kind: Literal["host"] = "host"
    name: Name = "host"
    group: Group = None
    max_cpu_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    cpu_sample: Duration = timedelta(milliseconds=500)
    max_memory_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    max_disk_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    disk_path: Annotated[str, Field(min_length=1)] = "/"
    max_load: Annotated[float, Field(gt=0)] | None = None
    load_per_core: bool = False
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _some_limit(self) -> HostProbe:
        limits = (self.max_cpu_percent, self.max_memory_percent, self.max_disk_percent, self.max_load)
        if all(limit is None for limit in limits):
            raise ValueError(
                "set at least one of max_cpu_percent, max_memory_percent, max_disk_percent, max_load"
            )
        if self.cpu_sample >= self.timeout:
            raise ValueError("cpu_sample must be shorter than timeout")
        return self


class CommandProbe(MedkitModel):
    """A read-only check program (argv, never a shell): exit code 0 is healthy, anything else not."""

    kind: Literal["command"] = "command"
    name: Name = "command"
    group: Group = None
    argv: Annotated[list[str], Field(min_length=1)]
    cwd: str | None = None
    env: ChildEnv = Field(default_factory=dict)
    inherit_env: InheritEnv = Field(default_factory=list)
    timeout: Duration = timedelta(seconds=10)


ProbeSpec = Annotated[
    HttpProbe | TcpProbe | ProcessProbe | PrometheusProbe | HostProbe | CommandProbe,
    Field(discriminator="kind"),
]
"""Any probe a policy can name, selected by its `kind`."""

class ProbeResult(MedkitModel):
    """What one probe saw. Unhealthy is a result, not an error."""

    probe: str
    kind: str
    healthy: bool
    detail: str
    latency_ms: float | None = None
    observed: dict[str, float | int | str | None] = Field(default_factory=dict)
    failure: Literal["unreachable", "bad_status", "slow", "body_mismatch", "process_down",
                     "resource_limit", "error", "threshold", "check_failed"] | None = None
    at: datetime

    def evidence(self) -> str:
        """One line for the timeline and the UI."""
        state = "healthy" if self.healthy else "UNHEALTHY"
        latency = f" in {self.latency_ms:.0f} ms" if self.latency_ms is not None else ""
        return f"{self.probe} ({self.kind}) {state}{latency}: {self.detail}"


class ProbeRoundRequest(MedkitModel):
    """One round of every probe of a service, run together by the `probe_service` activity."""

    service: Name
    probes: list[ProbeSpec] = Field(min_length=1)


class ProbeRound(MedkitModel):
    """The results of one round, in the order of the request's probes."""

    results: list[ProbeResult]
    seconds: Annotated[float, Field(ge=0)]
    """How long the round took on the worker's monotonic clock, kept in the history with the
    results (validation keeps its schedule by workflow time, see RecoveryWorkflow._validate)."""
