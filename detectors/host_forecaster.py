"""The host resource forecaster: CPU, memory and disk limits now, and disks that will fill soon.

Every `interval` it takes one reading (psutil in production; any callable in tests). A value over
its limit for `sustain` readings in a row fires. For each disk with `predict`, an ordinary least
squares line is fitted (statsmodels) to the last `trend_samples` readings of used bytes; when the
growth is significantly positive and the line reaches the limit within `horizon`, it fires before
the limit is hit, with the time-to-limit, the forecast at the horizon and its prediction interval
as evidence. Each kind of finding has its own cool-down, measured on the readings' clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import psutil
import structlog

from detectors.health_poller import Reporter
from models.detection import Detection, incident_key_from
from models.policy import DiskWatchSpec, HostWatchSpec, ServicePolicy


@dataclass(frozen=True)
class DiskReading:
    """Bytes used on a filesystem, and its usable size (used + free to unprivileged users, as df)."""

    used: int
    size: int

    @property
    def percent(self) -> float:
        """Used share of the usable size, in percent."""
        return 100.0 * self.used / self.size if self.size else 0.0


@dataclass(frozen=True)
class HostReading:
    """One sample of this host; a missing value (None, or an absent disk) is skipped."""

    at: datetime
    cpu_percent: float | None
    memory_percent: float | None
    disks: dict[str, DiskReading]


Sampler = Callable[[], HostReading]
"""Takes one reading; called in a worker thread, so it may block briefly."""


class PsutilSampler:
    """The production sampler: system-wide CPU since the last reading, memory, and each disk."""

    def __init__(self, spec: HostWatchSpec) -> None:
        self.paths = [disk.path for disk in spec.disks]
        psutil.cpu_percent(interval=None)

    def __call__(self) -> HostReading:
        """Read psutil now."""
        disks: dict[str, DiskReading] = {}
        for path in self.paths:
            try:
                usage = psutil.disk_usage(path)
            except OSError as err:
                structlog.get_logger("medkit.host").warning("cannot read disk", path=path,
                                                             error=err.strerror)
                continue
            disks[path] = DiskReading(used=usage.used, size=usage.used + usage.free)
        return HostReading(at=datetime.now(UTC), cpu_percent=psutil.cpu_percent(interval=None),
                           memory_percent=psutil.virtual_memory().percent, disks=disks)


@dataclass(frozen=True)
class DiskForecast:
    """A linear trend of a disk's used bytes, projected to its limit and to the horizon."""

    slope: float
    slope_low: float
    slope_high: float
    fitted_now: float
    at_horizon: float
    horizon_low: float
    horizon_high: float
    samples: int

    def seconds_to(self, limit: float, slope: float) -> float | None:
        """When the line with this slope reaches `limit` (None when it never does)."""
        if slope <= 0:
            return None
        return max(0.0, (limit - self.fitted_now) / slope)


def fit_disk_trend(times: list[float], used: list[float], horizon: float,
                   confidence: float) -> DiskForecast:
    """Fit used bytes against time (seconds, last sample at 0) by OLS and forecast at `horizon`.

    The slope interval is the coefficient's confidence interval; the horizon interval is the
    prediction interval of one future observation, both at `confidence`.
    """
    import statsmodels.api as sm  # type: ignore[import-untyped]

    t = np.asarray(times, dtype=float) - times[-1]
    y = np.asarray(used, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = sm.OLS(y, sm.add_constant(t, has_constant="add")).fit()
        alpha = 1.0 - confidence
        slope_low, slope_high = (float(v) for v in np.asarray(fit.conf_int(alpha))[1])
        frame = fit.get_prediction(np.array([[1.0, 0.0], [1.0, horizon]])).summary_frame(alpha=alpha)
    means = frame["mean"].to_numpy(dtype=float)
    lows = frame["obs_ci_lower"].to_numpy(dtype=float)
    highs = frame["obs_ci_upper"].to_numpy(dtype=float)
    slope = float(np.asarray(fit.params)[1])
    spread = not np.isfinite(slope_low)
    return DiskForecast(
        slope=slope, slope_low=slope if spread else slope_low, slope_high=slope if spread else slope_high,
        fitted_now=float(means[0]), at_horizon=float(means[1]),
        horizon_low=float(means[1] if not np.isfinite(lows[1]) else lows[1]),
        horizon_high=float(means[1] if not np.isfinite(highs[1]) else highs[1]),
        samples=len(times),
    )


@dataclass(frozen=True)
class Finding:
    """Something the forecaster wants reported: its incident key, one line and the evidence."""

    key: str
    incident_key: str
    summary: str
    labels: dict[str, str]


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


class HostForecaster:
    """Turns readings into findings; pure (no clock, no I/O), so it can be fed synthetic readings."""

    def __init__(self, spec: HostWatchSpec) -> None:
        self.spec = spec
        self.over: dict[str, int] = {}
        self.quiet_until: dict[str, datetime] = {}
        self.history: dict[str, deque[tuple[float, float]]] = {
            disk.path: deque(maxlen=spec.trend_samples) for disk in spec.disks
        }
        self.last_forecast: dict[str, DiskForecast] = {}

    def observe(self, reading: HostReading) -> list[Finding]:
        """Record one reading; the findings that should be reported now (cool-downs applied)."""
        candidates: list[Finding] = []
        spec = self.spec
        for key, value, limit, label in (
            ("cpu", reading.cpu_percent, spec.cpu_percent, "CPU"),
            ("memory", reading.memory_percent, spec.memory_percent, "memory"),
        ):
            if self._sustained(key, value, limit):
                assert value is not None and limit is not None
                candidates.append(Finding(
                    key=key, incident_key=f"host-{key}",
                    summary=f"host {label} at {value:.1f}% for {self.over[key]} readings "
                            f"(limit {limit:g}%)",
                    labels={"resource": key, "percent": f"{value:.1f}", "limit_percent": f"{limit:g}"},
                ))
        for disk in spec.disks:
            usage = reading.disks.get(disk.path)
            if usage is not None:
                candidates.extend(self._disk(disk, usage, reading.at))
        return [f for f in candidates if self._fire(f.key, reading.at)]

    def _sustained(self, key: str, value: float | None, limit: float | None) -> bool:
        if value is None or limit is None or value < limit:
            self.over[key] = 0
            return False
        self.over[key] = self.over.get(key, 0) + 1
        return self.over[key] >= self.spec.sustain

    def _fire(self, key: str, at: datetime) -> bool:
        until = self.quiet_until.get(key)
        if until is not None and at < until:
            return False
        self.quiet_until[key] = at + self.spec.cooldown
        return True

    def _disk(self, disk: DiskWatchSpec, usage: DiskReading, at: datetime) -> list[Finding]:
        incident = incident_key_from(f"host-disk-{disk.path.strip('/') or 'root'}")
        base = {"resource": "disk", "path": disk.path, "percent": f"{usage.percent:.1f}",
                "limit_percent": f"{disk.max_percent:g}", "used_bytes": str(usage.used),
                "size_bytes": str(usage.size)}
        findings: list[Finding] = []
        if self._sustained(f"disk:{disk.path}", usage.percent, disk.max_percent):
            findings.append(Finding(
                key=f"disk:{disk.path}", incident_key=incident, labels=base,
                summary=f"disk {disk.path} at {usage.percent:.1f}% of {_gib(usage.size)} "
                        f"(limit {disk.max_percent:g}%)",
            ))
        history = self.history[disk.path]
        history.append((at.timestamp(), float(usage.used)))
        if not disk.predict or len(history) < self.spec.min_samples or usage.percent >= disk.max_percent:
            return findings
        found = self._predict(disk, usage, history, base, incident)
        return [*findings, *([found] if found else [])]

    def _predict(self, disk: DiskWatchSpec, usage: DiskReading, history: deque[tuple[float, float]],
                 base: dict[str, str], incident: str) -> Finding | None:
        spec = self.spec
        horizon = spec.horizon.total_seconds()
        times, used = zip(*history, strict=True)
        forecast = fit_disk_trend(list(times), list(used), horizon, spec.confidence)
        self.last_forecast[disk.path] = forecast
        limit = usage.size * disk.max_percent / 100.0
        eta = forecast.seconds_to(limit, forecast.slope)
        if forecast.slope_low <= 0 or eta is None or eta > horizon:
            return None
        earliest = forecast.seconds_to(limit, forecast.slope_high) or eta
        latest = forecast.seconds_to(limit, forecast.slope_low) or eta
        pct = 100.0 / usage.size
        level = f"{spec.confidence:.0%}"
        summary = (
            f"disk {disk.path} will reach its {disk.max_percent:g}% limit in ~{_duration(eta)} "
            f"(likely {_duration(earliest)}-{_duration(latest)}): now {usage.percent:.1f}% of "
            f"{_gib(usage.size)}, growing {_gib(forecast.slope * 3600)}/h; forecast at "
            f"+{_duration(horizon)}: {forecast.at_horizon * pct:.1f}% ({level} prediction interval "
            f"{forecast.horizon_low * pct:.1f}-{forecast.horizon_high * pct:.1f}%)"
        )
        labels = {
            **base, "forecast": "true", "eta_seconds": f"{eta:.0f}",
            "eta_low_seconds": f"{earliest:.0f}", "eta_high_seconds": f"{latest:.0f}",
            "horizon_seconds": f"{horizon:.0f}",
            "forecast_percent": f"{forecast.at_horizon * pct:.1f}",
            "forecast_low_percent": f"{forecast.horizon_low * pct:.1f}",
            "forecast_high_percent": f"{forecast.horizon_high * pct:.1f}",
            "interval_level": f"{spec.confidence:g}",
            "growth_bytes_per_hour": f"{forecast.slope * 3600:.0f}", "samples": str(forecast.samples),
        }
        return Finding(key=f"forecast:{disk.path}", incident_key=incident, summary=summary,
                       labels=labels)


def detection_for(finding: Finding, spec: HostWatchSpec, at: datetime) -> Detection:
    """The detection reported for one finding, against the section's service."""
    return Detection(
        detection_id=str(uuid.uuid4()), service=spec.service, incident_key=finding.incident_key,
        source="host_resources", severity=spec.severity, summary=finding.summary[:2000],
        labels=finding.labels, detected_at=at,
    )


async def run_host_forecaster(spec: HostWatchSpec, policy: ServicePolicy, report: Reporter,
                              sampler: Sampler | None = None) -> None:
    """Sample on absolute ticks every `spec.interval` and report findings, until cancelled."""
    log = structlog.get_logger("medkit.host").bind(service=spec.service)
    sample = sampler or PsutilSampler(spec)
    forecaster = HostForecaster(spec)
    interval = spec.interval.total_seconds()
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while True:
        await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))
        try:
            reading = await asyncio.to_thread(sample)
        except Exception as err:  # one bad reading must not stop the watcher
            log.error("host reading failed", error=str(err) or type(err).__name__)
        else:
            for finding in forecaster.observe(reading):
                detection = detection_for(finding, spec, reading.at)
                log.warning("host finding, reporting", key=finding.key, summary=finding.summary)
                try:
                    await asyncio.wait_for(report(detection, policy), 15.0)
                except Exception as err:  # retried when the finding's cool-down ends
                    log.error("report failed", key=finding.key, error=str(err) or type(err).__name__)
                    forecaster.quiet_until.pop(finding.key, None)
        tick = max(tick + 1, int((loop.time() - start) // interval) + 1)
