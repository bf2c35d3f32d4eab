"""The host forecaster: limits now, and a disk that will fill, fed deterministic synthetic readings."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.host_forecaster import (
    DiskReading,
    Finding,
    HostForecaster,
    HostReading,
    PsutilSampler,
    run_host_forecaster,
)
from models.detection import Detection
from models.policy import HostWatchSpec, ServicePolicy
from tests.conftest import eventually

GIB = 2**30
SIZE = 100 * GIB
START = datetime(2025, 3, 1, tzinfo=UTC)
LADDERS = {level: [{"name": "noop", "steps": [{"wait": "1s"}]}] for level in ("minor", "major", "critical")}


def spec(**overrides: Any) -> HostWatchSpec:
    """A disk-only watch of /var with a 2h horizon, one reading a minute."""
    fields: dict[str, Any] = {"service": "db", "interval": "60s", "cpu_percent": None,
                              "memory_percent": None, "disks": [{"path": "/var", "max_percent": 90}],
                              "horizon": "2h", "trend_samples": 60, "min_samples": 10}
    return HostWatchSpec.model_validate({**fields, **overrides})


def fill(rate_gib_per_min: float, start_percent: float, seed: int = 7) -> Iterator[HostReading]:
    """One reading a minute of /var filling at a steady rate, with a little seeded noise."""
    rng = random.Random(seed)
    minute = 0
    while True:
        used = SIZE * start_percent / 100 + minute * rate_gib_per_min * GIB + rng.gauss(0, 0.05 * GIB)
        yield HostReading(at=START + timedelta(minutes=minute), cpu_percent=None, memory_percent=None,
                          disks={"/var": DiskReading(used=int(used), size=SIZE)})
        minute += 1


def first_finding(forecaster: HostForecaster, readings: Iterator[HostReading],
                  limit: int = 2000) -> tuple[HostReading, Finding] | None:
    """Feed readings until the forecaster finds something."""
    for _, reading in zip(range(limit), readings, strict=False):
        findings = forecaster.observe(reading)
        if findings:
            return reading, findings[0]
    return None


def test_filling_disk_is_predicted_before_it_crosses_the_limit() -> None:
    found = first_finding(HostForecaster(spec()), fill(rate_gib_per_min=0.1, start_percent=50))
    assert found is not None
    reading, finding = found
    assert reading.disks["/var"].percent < 90
    assert finding.incident_key == "host-disk-var"
    labels = finding.labels
    assert labels["forecast"] == "true" and labels["path"] == "/var"
    eta = float(labels["eta_seconds"])
    assert 0 < eta <= 7200
    assert float(labels["eta_low_seconds"]) <= eta <= float(labels["eta_high_seconds"])
    low, mid, high = (float(labels[k]) for k in ("forecast_low_percent", "forecast_percent",
                                                  "forecast_high_percent"))
    assert low <= mid <= high and mid >= 90
    assert float(labels["growth_bytes_per_hour"]) / GIB == pytest.approx(6.0, rel=0.05)
    assert "will reach its 90% limit in ~" in finding.summary
    assert "95% prediction interval" in finding.summary


def test_flat_noisy_disk_never_fires() -> None:
    forecaster = HostForecaster(spec())
    assert first_finding(forecaster, fill(rate_gib_per_min=0.0, start_percent=85), limit=600) is None
    assert forecaster.last_forecast["/var"].samples == 60


def test_slow_growth_beyond_the_horizon_does_not_fire_yet() -> None:
    forecaster = HostForecaster(spec())
    readings = fill(rate_gib_per_min=0.01, start_percent=50)
    assert first_finding(forecaster, readings, limit=120) is None
    forecast = forecaster.last_forecast["/var"]
    assert forecast.slope > 0
    assert forecast.at_horizon < SIZE * 0.9


def test_over_the_limit_fires_after_sustained_readings_then_cools_down() -> None:
    forecaster = HostForecaster(spec(cpu_percent=90, sustain=3, cooldown="10m", disks=[]))

    def at(minute: int, cpu: float) -> list[Finding]:
        return forecaster.observe(HostReading(at=START + timedelta(minutes=minute), cpu_percent=cpu,
                                              memory_percent=None, disks={}))

    assert [at(0, 95), at(1, 97), at(2, 50), at(3, 95), at(4, 96)] == [[]] * 5
    fired = at(5, 99)
    assert [f.incident_key for f in fired] == ["host-cpu"]
    assert fired[0].labels["percent"] == "99.0"
    assert [at(m, 99) for m in range(6, 15)] == [[]] * 9
    assert [f.key for f in at(15, 99)] == ["cpu"]


def test_disk_over_its_limit_is_reported_now_as_well() -> None:
    forecaster = HostForecaster(spec(sustain=1))
    reading = HostReading(at=START, cpu_percent=None, memory_percent=None,
                          disks={"/var": DiskReading(used=int(SIZE * 0.95), size=SIZE)})
    [finding] = forecaster.observe(reading)
    assert finding.key == "disk:/var" and finding.incident_key == "host-disk-var"
    assert finding.labels["percent"] == "95.0"


def test_psutil_sampler_reads_this_host() -> None:
    reading = PsutilSampler(spec(disks=[{"path": "/"}, {"path": "/no/such/mount"}]))()
    assert set(reading.disks) == {"/"}
    assert 0 < reading.disks["/"].percent <= 100
    assert reading.memory_percent is not None and 0 < reading.memory_percent <= 100
    assert reading.cpu_percent is not None


async def test_forecaster_loop_reports_against_the_configured_service() -> None:
    policy = ServicePolicy.model_validate({"name": "db", "probes": [{"kind": "tcp", "port": 5432}],
                                           "ladders": LADDERS})
    readings = fill(rate_gib_per_min=0.2, start_percent=60)
    detections: list[Detection] = []

    async def report(detection: Detection, service: ServicePolicy) -> None:
        assert service is policy
        detections.append(detection)

    task = asyncio.create_task(run_host_forecaster(spec(interval="10ms"), policy, report,
                                                   sampler=lambda: next(readings)))
    try:
        await eventually(lambda: asyncio.sleep(0, detections))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    detection = detections[0]
    assert detection.service == "db" and detection.source == "host_resources"
    assert detection.incident_key == "host-disk-var"
    assert detection.labels["forecast"] == "true"
    assert float(detection.labels["percent"]) < 90
