"""The policy file: per service, how to probe it, how to remediate it and whom to tell.

A `ServicePolicy` snapshot travels inside the workflow input, so every recovery's history
records exactly the policy it ran with, and workflows never read files or the environment.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from models.actions import ActionSpec
from models.base import Duration, MedkitModel, Name, positive
from models.fleet import BudgetSpec, FleetSpec
from models.notifications import NotificationRoute
from models.phases import Severity
from models.probes import Comparison, ProbeSpec
from models.references import UnresolvedReferences, service_names, unresolved
from models.urls import RequestUrl


def spec_digest(spec: MedkitModel) -> str:
    """The sha256 (hex) of a spec's canonical JSON, so a worker can tell whether an action, probe
    or route it is asked to run is exactly the one its own policy file defines."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class StepSpec(MedkitModel):
    """One step of a rung: run an action, check the probes, or wait. Exactly one of the three."""

    action: Name | None = None
    check: bool = False
    wait: Duration | None = None
    requires_approval: bool = False
    approval_timeout: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _exactly_one(self) -> StepSpec:
        chosen = [self.action is not None, self.check, self.wait is not None]
        if sum(chosen) != 1:
            raise ValueError("a step needs exactly one of: action, check: true, wait")
        if self.requires_approval and self.action is None:
            raise ValueError("requires_approval only applies to an action step")
        return self

    def label(self) -> str:
        """A short human name for the step, for the timeline and the UI."""
        if self.action is not None:
            return self.action
        if self.check:
            return "check"
        return f"wait {self.wait}"


class RungSpec(MedkitModel):
    """One approach to fixing the service: its steps run in order, then validation decides."""

    name: Name
    steps: list[StepSpec] = Field(min_length=1)


class LaddersSpec(MedkitModel):
    """The remediation ladder for each severity; retries climb to the next rung."""

    minor: list[RungSpec] = Field(min_length=1)
    major: list[RungSpec] = Field(min_length=1)
    critical: list[RungSpec] = Field(min_length=1)

    def for_severity(self, severity: Severity) -> list[RungSpec]:
        """The ladder that runs for an incident of this severity."""
        return {Severity.MINOR: self.minor, Severity.MAJOR: self.major,
                Severity.CRITICAL: self.critical}[severity]


class ValidationSpec(MedkitModel):
    """Success criteria: of `samples` probe rounds, `interval` apart, `required_successes` pass."""

    samples: Annotated[int, Field(ge=1, le=100)] = 3
    interval: Duration = timedelta(seconds=2)
    required_successes: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _within_samples(self) -> ValidationSpec:
        if self.required_successes is not None and self.required_successes > self.samples:
            raise ValueError("required_successes cannot exceed samples")
        return self

    @property
    def needed(self) -> int:
        """How many healthy rounds make a success (all of them by default)."""
        return self.required_successes if self.required_successes is not None else self.samples


class RetrySpec(MedkitModel):
    """How many rungs to try before handing over to a human, and the backoff between them."""

    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    initial_backoff: Duration = timedelta(seconds=5)
    backoff_coefficient: Annotated[float, Field(ge=1.0, le=10.0)] = 2.0
    max_backoff: Duration = timedelta(minutes=2)

    def backoff(self, failed_attempts: int) -> timedelta:
        """The wait after the given number of failed attempts (1 = after the first failure)."""
        seconds = self.initial_backoff.total_seconds() * self.backoff_coefficient ** (
            failed_attempts - 1
        )
        return min(timedelta(seconds=seconds), self.max_backoff)


class EscalationSpec(MedkitModel):
    """When nobody decides: notify `routes` again every `after`, at most `max_escalations` times."""

    after: Duration = timedelta(minutes=5)
    max_escalations: Annotated[int, Field(ge=0, le=50)] = 3
    routes: list[Name] = Field(default_factory=list)


class RuleCondition(MedkitModel):
    """Which probes a rule looks at, what each must show, and how many of them must show it.

    Selected: the probes named in `probes` plus every probe of `group` (all probes when neither
    is set). Each selected probe matches when it is failing (if `failing` is set) and every
    `observed` comparison holds for its observed values. `match` is `any`, `all` or a minimum count.
    """

    probes: list[Name] = Field(default_factory=list)
    group: Name | None = None
    failing: bool | None = None
    observed: dict[str, Comparison] = Field(default_factory=dict)
    match: Literal["any", "all"] | Annotated[int, Field(ge=1)] = "any"

    @model_validator(mode="after")
    def _tests_something(self) -> RuleCondition:
        if self.failing is None and not self.observed:
            raise ValueError("a rule condition needs failing: true|false, observed: {...}, or both")
        return self


class AssessmentRule(MedkitModel):
    """When the condition holds, the incident has this severity (and category, if given)."""

    name: Name | None = None
    when: RuleCondition
    severity: Severity
    category: Name | None = None


class AssessmentSpec(MedkitModel):
    """How probe results during assessment decide severity; the detector's own severity is a floor.

    The first of `rules` whose condition holds decides; when none does, the all/some/no-probe
    defaults do. With `dismiss_when_healthy`, a report that no probe can confirm ends the
    recovery as Dismissed without acting; by default medkit trusts the detector and acts.
    """

    all_probes_fail: Severity = Severity.MAJOR
    some_probes_fail: Severity = Severity.MINOR
    no_probe_fails: Severity = Severity.MINOR
    dismiss_when_healthy: bool = False
    rules: list[AssessmentRule] = Field(default_factory=list)


class HealthPollSpec(MedkitModel):
    """How the built-in health poller watches this service (see docs/detectors.md).

    It fires after `failure_threshold` failing rounds in a row, then stays quiet until
    `recovery_threshold` healthy rounds in a row clear it (hysteresis, so a flapping service fires
    once), and never fires twice within `cooldown`; a service still failing `repeat_every` after
    it fired is reported again, so a recovery that ended with the service down is followed by a
    new one.
    """

    enabled: bool = True
    interval: Duration = timedelta(seconds=5)
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    recovery_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    cooldown: Duration = timedelta(minutes=1)
    repeat_every: Duration = timedelta(minutes=5)
    severity: Severity | None = None

    @model_validator(mode="after")
    def _positive_interval(self) -> HealthPollSpec:
        positive(self.interval, "health_poll.interval")
        return self


class SloSpec(MedkitModel):
    """The service's availability objective over a rolling window, for `medkit report`.

    `availability` is a percentage below 100 (a 100% objective leaves no error budget to report
    against); the error budget is `(100 - availability)%` of `window` (see docs/reporting.md).
    """

    availability: Annotated[float, Field(gt=0, lt=100)]
    window: Duration = timedelta(days=30)

    @model_validator(mode="after")
    def _positive_window(self) -> SloSpec:
        positive(self.window, "slo.window")
        return self


class _InPolicyFile:
    """A service's own `fleet` value as written in a policy file, wrapped by PolicyFile so that
    ServicePolicy refuses it at its field (a snapshot, validated on its own, keeps its `fleet`)."""

    def __init__(self, value: object) -> None:
        self.value = value


FLEET_IS_FILE_WIDE = ("fleet limits apply to the whole fleet: set them in the top-level `fleet` "
                      "section, not in a service (a service's own would be replaced by it)")


class ServicePolicy(MedkitModel):
    """Everything medkit knows about one service. Its snapshot is the workflow's policy input.

    Its `fleet` is not for policy files to set: PolicyFile stamps the top-level limits and the
    fleet's size on every service it holds, so that the snapshot carries them."""

    name: Name
    description: str = ""
    probes: list[ProbeSpec] = Field(min_length=1)
    actions: dict[Name, ActionSpec] = Field(default_factory=dict)
    ladders: LaddersSpec
    assessment: AssessmentSpec = Field(default_factory=AssessmentSpec)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)
    routes: dict[Name, NotificationRoute] = Field(default_factory=dict)
    health_poll: HealthPollSpec = Field(default_factory=HealthPollSpec)
    dry_run: bool = False
    exclusive: bool = True
    budgets: list[BudgetSpec] = Field(default_factory=list)
    fleet: FleetSpec = Field(default_factory=FleetSpec)
    slo: SloSpec | None = None

    @field_validator("fleet", mode="before")
    @classmethod
    def _fleet_not_from_the_file(cls, value: object) -> object:
        """Refuse a `fleet` a policy file gave a service: it would be silently replaced."""
        if isinstance(value, _InPolicyFile):
            raise ValueError(FLEET_IS_FILE_WIDE)
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> ServicePolicy:
        """Every action, route, probe and group a field names is defined, and probe names are
        unique; otherwise UnresolvedReferences, listing each problem at its own field so the
        loader reports each at its line. The check runs on plain data, the one the loader also
        runs on a service whose fields did not validate (when pydantic skips this one)."""
        problems = unresolved(service_names(self.model_dump(include=_REFERRING_FIELDS)))
        if problems:
            raise UnresolvedReferences(problems)
        return self


_REFERRING_FIELDS = {"probes", "actions", "ladders", "assessment", "escalation", "routes", "budgets"}
"""The fields of a service that define names or refer to them (see models/references.py)."""


class DiskWatchSpec(MedkitModel):
    """One filesystem the host forecaster watches: a usage limit, and a forecast of reaching it."""

    path: Annotated[str, Field(pattern=r"^/")]
    max_percent: Annotated[float, Field(gt=0, le=100)] = 90.0
    predict: bool = True


class HostWatchSpec(MedkitModel):
    """The optional `host:` section: CPU, memory and disk limits of this host, and disk forecasts.

    Host detections are reported against `service`, whose ladders handle them.
    """

    service: Name
    interval: Duration = timedelta(seconds=30)
    cpu_percent: Annotated[float, Field(gt=0, le=100)] | None = 95.0
    memory_percent: Annotated[float, Field(gt=0, le=100)] | None = 90.0
    sustain: Annotated[int, Field(ge=1, le=100)] = 3
    disks: list[DiskWatchSpec] = Field(default_factory=lambda: [DiskWatchSpec(path="/")])
    horizon: Duration = timedelta(hours=2)
    trend_samples: Annotated[int, Field(ge=5, le=10_000)] = 60
    min_samples: Annotated[int, Field(ge=3, le=10_000)] = 10
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    cooldown: Duration = timedelta(minutes=30)
    severity: Severity | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HostWatchSpec:
        positive(self.interval, "host.interval")
        positive(self.horizon, "host.horizon")
        if self.min_samples > self.trend_samples:
            raise ValueError("host.min_samples cannot exceed host.trend_samples")
        paths = [disk.path for disk in self.disks]
        if len(set(paths)) != len(paths):
            raise ValueError(f"host.disks paths must be unique, got {paths}")
        return self


class AnomalySeriesSpec(MedkitModel):
    """One metric series scored by the anomaly detector, pulled from Prometheus or pushed to medkit.

    `source: prometheus` (needs `prometheus` and `query`) is pulled by `medkit watch`;
    `source: push` is scored by `medkit serve` from points POSTed to `/v1/series/<name>/points`.
    Without `source`, setting `prometheus` and `query` means pulled and leaving both out means pushed.
    """

    name: Name
    service: Name
    source: Literal["prometheus", "push"] | None = None
    prometheus: RequestUrl | None = Field(default=None,
                                                                           validate_default=True)
    query: Annotated[str, Field(min_length=1)] | None = Field(default=None, validate_default=True)
    interval: Duration = timedelta(seconds=15)
    warmup: Duration = timedelta(hours=6)
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    cooldown: Duration = timedelta(minutes=15)
    timeout: Duration = timedelta(seconds=5)
    evidence_points: Annotated[int, Field(ge=1, le=100)] = 10
    severity: Severity | None = None

    @field_validator("prometheus", "query")
    @classmethod
    def _fits_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        """With an explicit `source`, the Prometheus fields are required (pulled) or refused (pushed)."""
        source = info.data.get("source")
        if source == "prometheus" and value is None:
            raise ValueError(f"{info.field_name} is required for a pulled series (source: prometheus)")
        if source == "push" and value is not None:
            raise ValueError(f"a pushed series (source: push) takes no {info.field_name}: its points "
                             "are POSTed to medkit serve")
        return value

    @model_validator(mode="after")
    def _pull_or_push(self) -> AnomalySeriesSpec:
        if (self.prometheus is None) != (self.query is None):
            raise ValueError("set both prometheus and query (pulled series), or neither (pushed)")
        if self.source is None:
            self.source = "push" if self.query is None else "prometheus"
        positive(self.interval, "interval")
        positive(self.timeout, "timeout")
        return self

    @property
    def pushed(self) -> bool:
        """Whether points arrive through the gateway (`medkit serve`) rather than from Prometheus."""
        return self.source == "push"


class AnomalyWatchSpec(MedkitModel):
    """The optional `anomaly:` section: the series the statistical anomaly detector scores."""

    series: list[AnomalySeriesSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> AnomalyWatchSpec:
        names = [s.name for s in self.series]
        repeated = sorted(n for n, times in Counter(names).items() if times > 1)
        if repeated:
            raise ValueError(f"anomaly series names must be unique; repeated: {repeated}")
        return self


class FleetLimitsSpec(FleetSpec):
    """The policy file's `fleet` section: FleetSpec without `fleet_size`, which medkit sets from
    the number of services in the file (a value written there would be silently replaced)."""

    fleet_size: Annotated[int, Field(ge=1, exclude=True)] = 1
    """Not a setting of the file: left out of dumps, so a dumped file reads back."""

    @field_validator("fleet_size", mode="before")
    @classmethod
    def _set_by_medkit(cls, value: object) -> object:
        """Refuse a `fleet_size` in the file."""
        raise ValueError("fleet_size is set by medkit from the number of services in the file; "
                         "remove it (max_percent is a percentage of that number)")


def _stamped_limits(fleet: object, size: int) -> FleetSpec | None:
    """The limits a file with this top-level `fleet` stamps on its services (None if invalid)."""
    written = fleet if isinstance(fleet, dict) else {}
    try:
        return FleetSpec.model_validate({**written, "fleet_size": size})
    except ValueError:
        return None


def _without_stamped_fleet(service: dict[str, Any], stamped: FleetSpec | None) -> dict[str, Any]:
    """The service without its `fleet` when that is what the file stamps anyway; otherwise with
    it wrapped, for ServicePolicy to refuse."""
    try:
        same = stamped is not None and FleetSpec.model_validate(service["fleet"]) == stamped
    except ValueError:
        same = False
    if same:
        return {k: v for k, v in service.items() if k != "fleet"}
    return {**service, "fleet": _InPolicyFile(service["fleet"])}


class PolicyFile(MedkitModel):
    """The whole policy file: shared notification routes and one policy per service."""

    version: Literal[1] = 1
    routes: dict[Name, NotificationRoute] = Field(default_factory=dict)
    services: list[ServicePolicy] = Field(min_length=1)
    host: HostWatchSpec | None = None
    anomaly: AnomalyWatchSpec | None = None
    fleet: FleetLimitsSpec = Field(default_factory=FleetLimitsSpec)
    dry_run: bool = False

    @model_validator(mode="before")
    @classmethod
    def _mark_service_fleets(cls, data: object) -> object:
        """Wrap a `fleet` written in a service, for ServicePolicy to refuse at its line.

        A value equal to what the file stamps anyway (a loaded file dumped and read again) is
        not a setting, so it is dropped instead: a round trip through `model_dump` reads back
        as the same file.
        """
        if not isinstance(data, dict) or not isinstance(data.get("services"), list):
            return data
        stamped = _stamped_limits(data.get("fleet"), len(data["services"]))
        services = [
            _without_stamped_fleet(service, stamped) if isinstance(service, dict) and "fleet" in service
            else service
            for service in data["services"]
        ]
        return {**data, "services": services}

    @model_validator(mode="before")
    @classmethod
    def _share_routes(cls, data: object) -> object:
        """Give every service the file's shared routes, unless it defines one of the same name."""
        if isinstance(data, dict) and isinstance(data.get("routes"), dict):
            shared = data["routes"]
            for service in data.get("services") or []:
                if isinstance(service, dict):
                    own = service.get("routes") or {}
                    if isinstance(own, dict):
                        service["routes"] = {**shared, **own}
        return data

    @model_validator(mode="after")
    def _share_fleet_limits(self) -> PolicyFile:
        """Every service's snapshot carries the fleet limits, the fleet's size and, when the
        whole file is in dry-run, the dry-run flag (a service cannot opt out of a global one)."""
        limits = FleetSpec.model_validate(
            {**self.fleet.model_dump(exclude={"fleet_size"}), "fleet_size": len(self.services)})
        for service in self.services:
            service.fleet = limits
            service.dry_run = service.dry_run or self.dry_run
        return self

    @model_validator(mode="after")
    def _unique_services(self) -> PolicyFile:
        names = [s.name for s in self.services]
        duplicates = sorted(n for n, times in Counter(names).items() if times > 1)
        if duplicates:
            raise ValueError(f"service names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _detectors_name_services(self) -> PolicyFile:
        known = {s.name for s in self.services}
        named = [("host.service", self.host.service)] if self.host else []
        if self.anomaly:
            named += [(f"anomaly.series {s.name!r}", s.service) for s in self.anomaly.series]
        problems = [f"{where} names unknown service {name!r}" for where, name in named
                    if name not in known]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def service(self, name: str) -> ServicePolicy:
        """The named service's policy, or a KeyError that lists the known services."""
        for policy in self.services:
            if policy.name == name:
                return policy
        raise KeyError(
            f"unknown service {name!r}; the policy defines: {', '.join(s.name for s in self.services)}"
        )
