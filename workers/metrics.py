"""The worker's Prometheus metrics: the Temporal SDK's own and medkit's recoveries, in one registry.

The SDK's metrics come through a `MetricBuffer` on the worker's Temporal runtime and are kept
here (rather than in the SDK's own Prometheus exporter), so `/metrics` serves both from one
address. medkit's metrics are counted by an activity interceptor, outside every workflow: it
reads the action activities' results and the `record_incident` activity's record, and lets the
ledger and the incident store, which already refuse to count anything twice, decide what is new.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Metric, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    BufferedMetricUpdate,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from models.actions import ActionRequest, ActionResult
from models.incident_record import IncidentRecord, IncidentRecorded
from models.phases import Phase
from store.incidents import IncidentRow
from workers.logging import core_logging
from workers.policy_guard import POLICY_MISMATCH

METRICS_ADDRESS_ENV = "MEDKIT_METRICS_ADDRESS"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
DISABLED = frozenset({"", "off", "none", "disabled"})
"""Values of --metrics-address / $MEDKIT_METRICS_ADDRESS that turn the endpoint off."""

BUFFER_SIZE = 100_000
"""SDK metric updates held between drains; the server drains every second and on each scrape."""

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Buckets of the SDK's latency histograms, in seconds."""

RECOVERY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
"""Buckets of the time to recover, in seconds: from a few seconds to hours with a human."""

PENDING_PHASES = {Phase.AWAITING_APPROVAL.value: "approval", Phase.MANUAL_INTERVENTION.value: "manual"}
"""The phases in which a recovery waits for a person, and the kind of decision it waits for."""


@dataclass(frozen=True)
class MetricsAddress:
    """Where `/metrics` and `/healthz` are served. `explicit`: set by the flag or the env var, so
    a taken port stops the worker; the implicit default only costs the endpoint (with a warning),
    so several workers on one host still start."""

    host: str
    port: int
    explicit: bool

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def metrics_address(flag: str | None) -> MetricsAddress | None:
    """The address to serve on (flag, then $MEDKIT_METRICS_ADDRESS, then 127.0.0.1:9464), or None
    when set to `off`; a ValueError names the bad value."""
    env = os.environ.get(METRICS_ADDRESS_ENV)
    given = flag if flag is not None else env
    text = given if given is not None else DEFAULT_METRICS_ADDRESS
    if text.strip().lower() in DISABLED:
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9464) or 'off'")
    return MetricsAddress(host.strip("[]"), int(port), explicit=given is not None)


def metrics_runtime() -> tuple[Runtime, MetricBuffer]:
    """A Temporal runtime whose SDK metrics go to a buffer (durations in seconds) for `/metrics`."""
    buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
    return Runtime(telemetry=TelemetryConfig(metrics=buffer, logging=core_logging())), buffer


LabelSet = tuple[tuple[str, str], ...]


@dataclass
class _HistogramState:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(LATENCY_BUCKETS):
            if value <= bound:
                self.buckets[index] += 1
        self.count += 1
        self.total += value


@dataclass
class _SdkMetric:
    kind: int
    description: str
    values: dict[LabelSet, float] = field(default_factory=dict)
    histograms: dict[LabelSet, _HistogramState] = field(default_factory=dict)


def _labels(attributes: Mapping[str, Any]) -> LabelSet:
    return tuple(sorted((key, str(value).lower() if isinstance(value, bool) else str(value))
                        for key, value in attributes.items()))


class SdkMetrics(Collector):
    """The Temporal SDK's metrics, accumulated from its buffer: counters get `_total`, gauges
    keep their last value, latency histograms are in seconds with medkit's buckets."""

    def __init__(self, buffer: MetricBuffer) -> None:
        self._buffer = buffer
        self._metrics: dict[str, _SdkMetric] = {}
        self._lock = threading.Lock()

    def drain(self) -> None:
        """Take every update out of the SDK's buffer; call regularly so it never fills up."""
        with self._lock:
            for update in self._buffer.retrieve_updates():
                self._absorb(update)

    def _absorb(self, update: BufferedMetricUpdate) -> None:
        metric = update.metric
        state = self._metrics.get(metric.name)
        if state is None:
            state = _SdkMetric(kind=metric.kind, description=metric.description or metric.name)
            self._metrics[metric.name] = state
        labels = _labels(update.attributes)
        if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
            state.values[labels] = state.values.get(labels, 0.0) + float(update.value)
        elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
            state.values[labels] = float(update.value)
        else:
            state.histograms.setdefault(labels, _HistogramState()).observe(float(update.value))

    def collect(self) -> Iterator[Metric]:
        """Every SDK metric seen so far, as exposition families."""
        self.drain()
        with self._lock:
            families = [self._family(name, state) for name, state in sorted(self._metrics.items())]
        yield from families

    @staticmethod
    def _family(name: str, state: _SdkMetric) -> Metric:
        if state.kind == BUFFERED_METRIC_KIND_COUNTER:
            family = Metric(name, state.description, "counter")
            for labels, value in state.values.items():
                family.add_sample(f"{name}_total", dict(labels), value)
        elif state.kind == BUFFERED_METRIC_KIND_GAUGE:
            family = Metric(name, state.description, "gauge")
            for labels, value in state.values.items():
                family.add_sample(name, dict(labels), value)
        else:
            family = Metric(name, state.description, "histogram")
            for labels, hist in state.histograms.items():
                for bound, count in zip(LATENCY_BUCKETS, hist.buckets, strict=True):
                    family.add_sample(f"{name}_bucket", {**dict(labels), "le": str(bound)}, count)
                family.add_sample(f"{name}_bucket", {**dict(labels), "le": "+Inf"}, hist.count)
                family.add_sample(f"{name}_count", dict(labels), hist.count)
                family.add_sample(f"{name}_sum", dict(labels), hist.total)
        return family


class PendingDecisions(Collector):
    """Recoveries waiting for a person, by service and kind, read from the incident store at
    scrape time: the store is shared by every worker, so each reports the same cluster-wide
    figure (aggregate with max, not sum)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        """One sample per service and kind with a recovery waiting."""
        family = Metric("medkit_worker_pending_decisions",
                        "Recoveries waiting for an operator decision (approval or manual), by service.",
                        "gauge")
        query = (select(IncidentRow.service, IncidentRow.phase, func.count())
                 .where(col(IncidentRow.outcome).is_(None),
                        col(IncidentRow.phase).in_(list(PENDING_PHASES)))
                 .group_by(col(IncidentRow.service), col(IncidentRow.phase)))
        try:
            with Session(self._engine) as session:
                rows = session.exec(query).all()
        except Exception as err:  # a scrape must still answer with the other metrics
            structlog.get_logger("medkit.metrics").warning(
                "could not read pending decisions from the incident store", error=str(err))
            rows = []
        for service, phase, count in rows:
            family.add_sample("medkit_worker_pending_decisions",
                              {"service": service, "kind": PENDING_PHASES[phase]}, float(count))
        yield family


class WorkerMetrics:
    """Everything `/metrics` serves for one worker: medkit's recovery metrics, the pending
    decisions in the incident store and, given the runtime's buffer, the SDK's metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine, sdk_buffer: MetricBuffer | None = None) -> None:
        self.registry = CollectorRegistry()
        self.sdk = SdkMetrics(sdk_buffer) if sdk_buffer is not None else None
        if self.sdk is not None:
            self.registry.register(self.sdk)
        self.registry.register(PendingDecisions(engine))
        self.recoveries_finished = Counter(
            "medkit_worker_recoveries_finished",
            "Recoveries that reached a terminal phase, by service and outcome.",
            ["service", "outcome"], registry=self.registry)
        self.time_to_recover = Histogram(
            "medkit_worker_recovery_duration_seconds",
            "From a recovery's start to its terminal phase, by service and outcome.",
            ["service", "outcome"], buckets=RECOVERY_BUCKETS, registry=self.registry)
        self.actions = Counter(
            "medkit_worker_actions",
            "Action attempts by service, kind and result (succeeded, failed, simulated, refused).",
            ["service", "kind", "result"], registry=self.registry)
        self.escalations = Counter(
            "medkit_worker_escalations", "Escalations recorded by recoveries, by service.",
            ["service"], registry=self.registry)

    def drain(self) -> None:
        """Move the SDK's buffered updates into the registry, so the buffer never overflows."""
        if self.sdk is not None:
            self.sdk.drain()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def count_action(self, request: ActionRequest, result: ActionResult) -> None:
        """An action attempt that returned; an idempotent repeat of a finished step (`replayed`)
        was counted when the step first ran, so it counts nothing."""
        if result.replayed:
            return
        outcome = "simulated" if result.simulated else "succeeded" if result.ok else "failed"
        self.actions.labels(request.service, request.spec.kind, outcome).inc()

    def count_action_error(self, request: ActionRequest, err: BaseException) -> None:
        """An action attempt that raised: refused by the worker's policy, or failed."""
        refused = isinstance(err, ApplicationError) and err.type == POLICY_MISMATCH
        self.actions.labels(request.service, request.spec.kind, "refused" if refused else "failed").inc()

    def count_record(self, record: IncidentRecord, recorded: IncidentRecorded) -> None:
        """Count what the incident store took as new in this write: its new timeline entries are
        the record's last `new_entries`, so a retried or repeated write, on this worker or another
        sharing the store, adds nothing."""
        if recorded.new_entries <= 0:
            return
        status = record.status
        new = status.timeline[len(status.timeline) - recorded.new_entries:]
        escalations = sum(1 for entry in new if entry.kind == "escalation")
        if escalations:
            self.escalations.labels(status.service).inc(escalations)
        if status.outcome is None or not status.phase.terminal:
            return
        ending = [entry for entry in new if entry.kind == "transition" and entry.to_phase.terminal]
        if ending:
            outcome = status.outcome.value
            self.recoveries_finished.labels(status.service, outcome).inc()
            seconds = (ending[-1].at - status.started_at).total_seconds()
            self.time_to_recover.labels(status.service, outcome).observe(max(seconds, 0.0))


class _CountOutcomes(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, metrics: WorkerMetrics) -> None:
        super().__init__(next)
        self._metrics = metrics

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        arg = input.args[0] if input.args else None
        try:
            result = await super().execute_activity(input)
        except Exception as err:
            if isinstance(arg, ActionRequest):
                self._metrics.count_action_error(arg, err)
            raise
        try:
            if isinstance(arg, ActionRequest) and isinstance(result, ActionResult):
                self._metrics.count_action(arg, result)
            elif isinstance(arg, IncidentRecord) and isinstance(result, IncidentRecorded):
                self._metrics.count_record(arg, result)
        except Exception as err:  # counting must never fail the activity it watched
            structlog.get_logger("medkit.metrics").warning(
                "could not count an activity's result", activity=activity.info().activity_type,
                error=str(err))
        return result


class MetricsInterceptor(Interceptor):
    """Counts actions, finished recoveries, times to recover and escalations from activity
    results, on the worker side, so no workflow code (and no replay) is involved."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Watch each activity execution."""
        return _CountOutcomes(next, self._metrics)
