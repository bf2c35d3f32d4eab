"""Pushed metric series: points POSTed to the gateway, scored by the statistical anomaly detector.

Each `source: push` series of the policy's `anomaly:` section has one `SeriesWatch` (detector,
recent values, cool-down) in this process. A batch is applied whole or not at all: its timestamps
are checked against the gateway's clock (at most MAX_CLOCK_SKEW ahead) and its order against the
series' last point before anything is scored (values are bounded by the request schema), it is
then scored on a copy of the state, its detections are delivered like any other
(signal-with-start of `recovery:<service>:anomaly-<series>`), and only then does the copy
replace the state. If
Temporal cannot be reached the copy is dropped, so re-sending the same batch scores it again
from the same state and fires again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog

from detectors.anomaly_watch import SeriesWatch
from gateway.ingest import Ingestor
from gateway.mapping import BatchRejected, PlannedReport, lookup_service
from gateway.metrics import GatewayMetrics
from gateway.schemas import PointIn, ScoredPoint, SeriesResult
from models.detection import Detection
from models.policy import PolicyFile, ServicePolicy

SOURCE = "anomaly"
"""The `source` label of the detections metrics for pushed series."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of the gateway's clock a point's timestamp may be. Each point must be after the
series' last one, so a single point from far in the future (year 9999) would make every later
point "too old" and wedge the series; a point further ahead than this is refused instead (422).
Five minutes absorbs clock skew between a sender and the gateway."""


class UnknownSeries(LookupError):
    """No pushed series of that name: the message says which ones exist."""


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def in_the_future(points: Sequence[PointIn], now: datetime) -> list[str]:
    """Every point more than MAX_CLOCK_SKEW ahead of `now` (the gateway's clock)."""
    horizon = now + MAX_CLOCK_SKEW
    return [f"points[{index}].timestamp: {_utc(point.timestamp).isoformat()} is more than "
            f"{MAX_CLOCK_SKEW.total_seconds() / 60:g} minutes ahead of the gateway's clock "
            f"({now.isoformat(timespec='seconds')})"
            for index, point in enumerate(points) if _utc(point.timestamp) > horizon]


def out_of_order(last: datetime | None, points: Sequence[PointIn]) -> list[str]:
    """Every point that is not strictly after the one before it (or the series' last point)."""
    problems: list[str] = []
    previous, where = last, "the series' last point"
    for index, point in enumerate(points):
        at = _utc(point.timestamp)
        if previous is not None and at <= previous:
            problems.append(f"points[{index}].timestamp: {at.isoformat()} is not after "
                            f"{where} ({previous.isoformat()})")
        else:
            previous, where = at, f"points[{index}]"
    return problems


class PushedSeries:
    """The detector state of every pushed series, and the one entry point that scores points."""

    def __init__(self, policy: PolicyFile, ingestor: Ingestor, metrics: GatewayMetrics) -> None:
        series = policy.anomaly.series if policy.anomaly else []
        self.watches = {s.name: SeriesWatch(s) for s in series if s.pushed}
        self.pulled = {s.name for s in series if not s.pushed}
        self.policies: dict[str, ServicePolicy] = {}
        for name, watch in self.watches.items():
            service = lookup_service(policy, watch.spec.service)
            if service is None:  # the policy file already refuses this; kept for the type
                raise ValueError(f"anomaly series {name!r} names unknown service {watch.spec.service!r}")
            self.policies[name] = service
        self._locks = {name: asyncio.Lock() for name in self.watches}
        self.ingestor = ingestor
        self.metrics = metrics
        self.log = structlog.get_logger("medkit.gateway.series")

    def _watch(self, name: str) -> SeriesWatch:
        watch = self.watches.get(name)
        if watch is not None:
            return watch
        if name in self.pulled:
            raise UnknownSeries(f"anomaly series {name!r} is pulled from Prometheus by medkit watch "
                                "(source: prometheus); only source: push series take points here")
        raise UnknownSeries(f"unknown pushed series {name[:100]!r}; the policy's pushed series: "
                            f"{', '.join(self.watches) or 'none'}")

    async def push(self, name: str, points: Sequence[PointIn]) -> SeriesResult:
        """Score the batch and deliver its detections; raises UnknownSeries, BatchRejected, or a
        Temporal error (TemporalUnavailable/TemporalFailed), in which case nothing is kept."""
        self._watch(name)
        async with self._locks[name]:
            watch = self._watch(name)
            ahead = in_the_future(points, datetime.now(UTC))
            if ahead:
                raise BatchRejected("future_timestamp", ahead)
            problems = out_of_order(watch.last, points)
            if problems:
                raise BatchRejected("out_of_order", problems)
            trial = watch.copy()
            scored: list[tuple[datetime, float, Detection | None]] = []
            for point in points:
                at = _utc(point.timestamp)
                score, detection = trial.update(at, point.value)
                scored.append((at, score, detection))
            detections = [d for _, _, d in scored if d is not None]
            for detection in detections:
                self.log.warning("anomaly, reporting", series=name, summary=detection.summary)
            policy = self.policies[name]
            delivered = await self.ingestor.deliver(
                [PlannedReport(detection=d, policy=policy) for d in detections], SOURCE)
            self.watches[name] = trial
        self.metrics.points_received.labels(name).inc(len(points))
        if detections:
            self.metrics.anomalies_fired.labels(name, policy.name).inc(len(detections))
        results = iter(delivered)
        out: list[ScoredPoint] = []
        for at, score, detection in scored:
            result = next(results) if detection is not None else None
            out.append(ScoredPoint(timestamp=at, score=score, fired=detection is not None,
                                   workflow_id=result.workflow_id if result else None,
                                   outcome=result.outcome if result else None))
        return SeriesResult(series=name, accepted=len(points), detections=len(detections), points=out)
