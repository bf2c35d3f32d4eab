"""Live anomaly watching: metric series scored point by point, firing on a score over threshold.

Series come from Prometheus (warmed up with one `query_range` over `warmup`, then one instant
`query` per tick) or are pushed (`AnomalyWatcher.observe`, or `medkit serve`, which scores
batches on a `SeriesWatch.copy()` so that a batch is applied whole or not at all).
Each series has its own `AnomalyDetector`; a score above the series' threshold fires a detection
for its service, with the score and the recent values as evidence, then stays quiet for
`cooldown` (measured on the points' timestamps, so pushed history behaves like live data).
A detection that could not be reported (Temporal unreachable) stays pending and is reported again
on each later tick or point until it is delivered: the detector has already opened its
refractory period, so the points that follow would not fire it again.
"""

from __future__ import annotations

import asyncio
import copy
import math
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from activities.url_errors import url_error
from detectors.anomaly import AnomalyDetector
from detectors.health_poller import Reporter
from models.detection import Detection, incident_key_from
from models.policy import AnomalySeriesSpec, AnomalyWatchSpec, ServicePolicy
from models.urls import redact_url, url_error_reason

MAX_RANGE_POINTS = 11_000
"""Prometheus refuses a query_range of more points than this; the warm-up is clamped to it."""

Point = tuple[datetime, float]


class PrometheusError(Exception):
    """Prometheus could not answer the query usefully; the message says why (no secrets in it)."""


def _sample(pair: Any) -> Point | None:
    """A `[unix_time, "value"]` pair as a point; None for NaN/Inf (stale or undefined).

    Raises PrometheusError for anything else, so a malformed answer is one failed pull.
    """
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise PrometheusError(f"malformed sample {str(pair)[:80]!r}: expected [time, \"value\"]")
    stamp, text = pair
    try:
        value = float(text)
        at = datetime.fromtimestamp(float(stamp), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PrometheusError(f"malformed sample {str(pair)[:80]!r}: time and value must be "
                              "numbers") from None
    if not math.isfinite(value):
        return None
    return at, value


_RESULT_TYPES = {"values": "matrix", "value": "vector"}
"""The result type each kind of query must answer: a range query a matrix, an instant one a vector."""


def _single_series(body: Any, key: str) -> list[Any]:
    """The samples of the one series a query returned (none for an empty result).

    Raises PrometheusError when the answer is not a successful Prometheus API response of the
    expected shape (a matrix for `query_range`, a vector or scalar for an instant query).
    """
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        reason = str(error)[:200] if error else "not a Prometheus API response"
        raise PrometheusError(f"query failed: {reason}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise PrometheusError("malformed answer: no 'data' object")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and key == "value":
        return [result]
    if kind != _RESULT_TYPES[key]:
        expected = "a matrix" if key == "values" else "a vector or scalar"
        raise PrometheusError(f"malformed answer: resultType {str(kind)[:40]!r}, expected {expected}")
    if not isinstance(result, list):
        raise PrometheusError(f"malformed answer: result is {type(result).__name__}, not a list")
    if len(result) > 1:
        raise PrometheusError(f"query returned {len(result)} series; it must return one "
                              "(aggregate it, e.g. with sum())")
    if not result:
        return []
    series = result[0]
    samples = series.get(key) if isinstance(series, dict) else None
    if samples is None:
        raise PrometheusError(f"malformed answer: the series has no {key!r}")
    if key == "value":
        return [samples]
    if not isinstance(samples, list):
        raise PrometheusError("malformed answer: the series' 'values' is not a list")
    return list(samples)


async def _get(http: httpx.AsyncClient, spec: AnomalySeriesSpec, path: str,
               params: dict[str, str]) -> Any:
    assert spec.prometheus is not None
    url = spec.prometheus.rstrip("/") + path
    shown = redact_url(url)  # the message is logged: never the credentials a URL may carry
    try:
        response = await http.get(url, params=params, timeout=spec.timeout.total_seconds())
    except httpx.HTTPError as err:
        raise PrometheusError(f"{shown} unreachable: {type(err).__name__}") from None
    except Exception as err:
        cause = url_error(err)
        if cause is None:
            raise
        raise PrometheusError(f"{shown} cannot be requested: {url_error_reason(cause)}") from None
    if response.status_code >= 500 and response.status_code != 503:
        raise PrometheusError(f"{shown} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise PrometheusError(f"{shown} answered HTTP {response.status_code} without JSON") from None


async def query_range(http: httpx.AsyncClient, spec: AnomalySeriesSpec, start: datetime,
                      end: datetime) -> list[Point]:
    """The series' points from `start` to `end`, one per `interval` (the warm-up history)."""
    assert spec.query is not None
    step = spec.interval.total_seconds()
    start = max(start, end - spec.interval * (MAX_RANGE_POINTS - 1))
    body = await _get(http, spec, "/api/v1/query_range", {
        "query": spec.query, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}",
        "step": f"{step:g}",
    })
    return [p for p in map(_sample, _single_series(body, "values")) if p is not None]


async def query_instant(http: httpx.AsyncClient, spec: AnomalySeriesSpec, at: datetime) -> Point | None:
    """The series' value at `at`, or None when the query returned nothing usable."""
    assert spec.query is not None
    body = await _get(http, spec, "/api/v1/query", {"query": spec.query, "time": f"{at.timestamp():.3f}"})
    samples = _single_series(body, "value")
    return _sample(samples[0]) if samples else None


class SeriesWatch:
    """One series: its detector, its recent values, and its cool-down. Pure; no clock, no I/O."""

    def __init__(self, spec: AnomalySeriesSpec) -> None:
        self.spec = spec
        self.detector = AnomalyDetector()
        self.recent: deque[Point] = deque(maxlen=spec.evidence_points)
        self.last: datetime | None = None
        self.quiet_until: datetime | None = None
        self.points = 0
        self.pending: Detection | None = None
        """The last detection fired and not yet delivered, retried until it is."""

    def learn(self, at: datetime, value: float) -> float:
        """Score and learn a point without firing (warm-up history); returns its score."""
        if self.last is not None and at <= self.last:
            raise ValueError(f"series {self.spec.name!r}: point at {at.isoformat()} is not after "
                             f"the last one ({self.last.isoformat()})")
        score = self.detector.update(at, value)
        self.last = at
        self.points += 1
        self.recent.append((at, value))
        return score

    def update(self, at: datetime, value: float) -> tuple[float, Detection | None]:
        """Score a live point; with a detection when it is over threshold and not cooling down."""
        score = self.learn(at, value)
        if score <= self.spec.threshold or (self.quiet_until is not None and at < self.quiet_until):
            return score, None
        self.quiet_until = at + self.spec.cooldown
        return score, self.detection(at, value, score)

    def detection(self, at: datetime, value: float, score: float) -> Detection:
        """The detection for an anomalous point, with the score and recent values as evidence."""
        spec = self.spec
        recent = ", ".join(f"{v:.6g}" for _, v in self.recent)
        source = (f"{spec.query} on {redact_url(spec.prometheus)}"
                  if spec.query and spec.prometheus else "pushed points")
        return Detection(
            detection_id=str(uuid.uuid4()), service=spec.service,
            incident_key=incident_key_from(f"anomaly-{spec.name}"), source="anomaly",
            severity=spec.severity,
            summary=(f"anomalous {spec.name}: value {value:.6g} scored {score:.2f} "
                     f"(threshold {spec.threshold:g}); recent values: {recent}")[:2000],
            labels={"series": spec.name, "score": f"{score:.3f}", "threshold": f"{spec.threshold:g}",
                    "value": f"{value:.6g}", "recent_values": recent,
                    "recent_since": self.recent[0][0].isoformat(), "source": source[:500]},
            detected_at=at,
        )

    def copy(self) -> SeriesWatch:
        """An independent copy of the state (detector included), to score on and then keep or drop."""
        clone = SeriesWatch(self.spec)
        clone.detector = copy.deepcopy(self.detector)
        clone.recent = deque(self.recent, maxlen=self.recent.maxlen)
        clone.last, clone.quiet_until, clone.points = self.last, self.quiet_until, self.points
        clone.pending = self.pending
        return clone


@dataclass(frozen=True)
class Scored:
    """What `observe` did with a point: its score, and whether it fired a detection."""

    series: str
    score: float
    fired: bool


class AnomalyWatcher:
    """All configured series; pulls the Prometheus ones in `run`, takes pushed points in `observe`."""

    def __init__(self, spec: AnomalyWatchSpec, policies: dict[str, ServicePolicy],
                 report: Reporter) -> None:
        self.series = {s.name: SeriesWatch(s) for s in spec.series}
        self.policies = policies
        self.report = report
        self.log = structlog.get_logger("medkit.anomaly")

    async def observe(self, series_name: str, timestamp: datetime, value: float) -> Scored:
        """Score one point of a series (in time order) and report it if anomalous.

        Raises KeyError for an unknown series and ValueError for a point out of order or not finite.
        """
        watch = self.series.get(series_name)
        if watch is None:
            raise KeyError(f"unknown anomaly series {series_name!r}; configured: "
                           f"{', '.join(self.series) or 'none'}")
        if not math.isfinite(value):
            raise ValueError(f"series {series_name!r}: value must be finite")
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        score, detection = watch.update(timestamp, value)
        if detection is not None:
            self._fired(watch, detection)
        await self._deliver(watch)
        return Scored(series_name, score, detection is not None)

    def _fired(self, watch: SeriesWatch, detection: Detection) -> None:
        """Make a new detection the series' pending one (a newer one replaces an undelivered one)."""
        self.log.warning("anomaly, reporting", series=watch.spec.name, summary=detection.summary)
        watch.pending = detection

    async def _deliver(self, watch: SeriesWatch) -> None:
        """Report the series' pending detection, if any; keep it pending if reporting fails."""
        detection = watch.pending
        if detection is None:
            return
        try:
            await asyncio.wait_for(self.report(detection, self.policies[watch.spec.service]), 15.0)
        except Exception as err:  # the detector is refractory now: retry this one, on the next tick
            self.log.error("report failed; retrying on the next point", series=watch.spec.name,
                           detection_id=detection.detection_id, error=str(err) or type(err).__name__)
            return
        watch.pending = None

    async def run(self) -> None:
        """Warm up and pull every Prometheus series on its interval, until cancelled."""
        pulled = [w for w in self.series.values() if w.spec.query is not None]
        if not pulled:
            await asyncio.Event().wait()
        async with httpx.AsyncClient() as http:
            await asyncio.gather(*(self._pull(http, watch) for watch in pulled))

    async def _warm_up(self, http: httpx.AsyncClient, watch: SeriesWatch) -> None:
        now = datetime.now(UTC)
        try:
            points = await query_range(http, watch.spec, now - watch.spec.warmup, now)
        except PrometheusError as err:
            self.log.warning("warm-up failed; learning from live points only",
                             series=watch.spec.name, error=str(err))
            return
        for at, value in points:
            watch.learn(at, value)
        self.log.info("warmed up", series=watch.spec.name, points=len(points))

    async def _pull(self, http: httpx.AsyncClient, watch: SeriesWatch) -> None:
        await self._warm_up(http, watch)
        interval = watch.spec.interval.total_seconds()
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 1
        while True:
            await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))
            try:
                point = await query_instant(http, watch.spec, datetime.now(UTC))
            except PrometheusError as err:
                self.log.error("pull failed", series=watch.spec.name, error=str(err))
                point = None
            if point is not None and (watch.last is None or point[0] > watch.last):
                score, detection = watch.update(*point)
                self.log.debug("scored", series=watch.spec.name, value=point[1], score=round(score, 4))
                if detection is not None:
                    self._fired(watch, detection)
            await self._deliver(watch)
            tick = max(tick + 1, int((loop.time() - start) // interval) + 1)
