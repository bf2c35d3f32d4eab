"""The health poller: flap damping and cool-down with real probes, and a drift-free schedule."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from activities.probes import run_probe
from detectors.health_poller import HealthPoller, Round, ServiceWatch, bounded_probe
from models.detection import Detection
from models.policy import ServicePolicy
from models.probes import HttpProbe
from tests.conftest import DemoService, eventually

LADDERS = {level: [{"name": "noop", "steps": [{"wait": "1s"}]}] for level in ("minor", "major", "critical")}


def service(name: str, probes: list[dict[str, Any]], **poll: Any) -> ServicePolicy:
    """A minimal policy whose only interesting part is its probes and health_poll."""
    return ServicePolicy.model_validate({"name": name, "probes": probes, "ladders": LADDERS,
                                         "health_poll": poll})


def demo_policy(demo: DemoService, **poll: Any) -> ServicePolicy:
    """The demo service probed on /healthz."""
    return service("demo", [{"kind": "http", "name": "healthz", "url": f"{demo.base}/healthz",
                             "timeout": "2s"}], **poll)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client configured like the poller's."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


class Recorder:
    """A reporter that keeps every detection it is given."""

    def __init__(self) -> None:
        self.detections: list[Detection] = []

    async def __call__(self, detection: Detection, policy: ServicePolicy) -> None:
        self.detections.append(detection)


async def test_flapping_service_fires_once_then_cool_down_holds_the_next_streak(
    demo_service: DemoService, http: httpx.AsyncClient
) -> None:
    policy = demo_policy(demo_service, failure_threshold=2, recovery_threshold=3, cooldown="60s")
    watch = ServiceWatch(policy.health_poll)
    clock = 0.0

    async def round_with(mode: str) -> bool:
        """Set the demo's fault, probe it for real, and feed the round to the decision."""
        nonlocal clock
        await asyncio.to_thread(demo_service.inject, mode)
        results = [await run_probe(http, spec) for spec in policy.probes]
        clock += 1.0
        return watch.observe(all(r.healthy for r in results), clock)

    assert [await round_with(m) for m in ("unhealthy", "unhealthy")] == [False, True]
    flapping = ["healthy", "unhealthy", "unhealthy", "unhealthy", "healthy", "healthy",
                "unhealthy", "unhealthy", "healthy", "unhealthy", "unhealthy", "unhealthy"]
    assert [await round_with(m) for m in flapping] == [False] * len(flapping)
    assert watch.state == "fired"

    for _ in range(3):
        assert await round_with("healthy") is False
    assert watch.state == "ok"
    assert [await round_with("unhealthy") for _ in range(4)] == [False] * 4
    assert watch.state == "cooling"
    assert watch.suppressed == 3

    clock += 60.0
    assert await round_with("unhealthy") is True


async def test_single_healthy_round_before_firing_resets_the_streak(
    demo_service: DemoService, http: httpx.AsyncClient
) -> None:
    policy = demo_policy(demo_service, failure_threshold=3, recovery_threshold=1, cooldown="0s")
    watch = ServiceWatch(policy.health_poll)
    outcomes = []
    for tick, mode in enumerate(["unhealthy", "unhealthy", "healthy", "unhealthy", "unhealthy",
                                 "unhealthy"]):
        demo_service.inject(mode)
        results = [await run_probe(http, spec) for spec in policy.probes]
        outcomes.append(watch.observe(all(r.healthy for r in results), float(tick)))
    assert outcomes == [False, False, False, False, False, True]


async def test_poller_reports_one_detection_per_outage(demo_service: DemoService) -> None:
    policy = demo_policy(demo_service, interval="100ms", failure_threshold=2, recovery_threshold=2,
                         cooldown="1h")
    report = Recorder()
    rounds: list[Round] = []
    poller = HealthPoller([policy], report, rounds.append)
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: _async(len(rounds) >= 2 and all(r.healthy for r in rounds)))
        assert report.detections == []
        demo_service.inject("unhealthy")
        await eventually(lambda: _async(len(report.detections) == 1))
        fired_at = len(rounds)
        await eventually(lambda: _async(len(rounds) >= fired_at + 10))
        assert all(not r.healthy for r in rounds[fired_at:])
        assert len(report.detections) == 1

        detection = report.detections[0]
        assert detection.service == "demo" and detection.source == "health_poller"
        assert detection.incident_key == "health"
        assert "HTTP 503" in detection.summary
        assert detection.labels == {"failures": "2", "failing_probes": "healthz"}

        demo_service.inject("healthy")
        healed_at = len(rounds)
        await eventually(lambda: _async(sum(r.healthy for r in rounds[healed_at:]) >= 3))
        demo_service.inject("unhealthy")
        broke_at = len(rounds)
        await eventually(lambda: _async(sum(not r.healthy for r in rounds[broke_at:]) >= 5))
        assert len(report.detections) == 1
        assert poller.watches["demo"].state == "cooling"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _async(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and reads but never answers: an HTTP probe of it times out."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@contextlib.asynccontextmanager
async def dripping_server() -> AsyncIterator[int]:
    """An HTTP server that sends its body one byte every 100 ms: no single read ever times out."""
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)
        writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_probe_is_bounded_by_its_timeout_even_when_each_read_is_quick(
    http: httpx.AsyncClient,
) -> None:
    async with dripping_server() as port:
        spec = HttpProbe(name="drip", url=f"http://127.0.0.1:{port}/", timeout="300ms")
        result = await bounded_probe(http, spec)
    assert not result.healthy
    assert result.failure == "slow"
    assert "did not finish" in result.detail


@contextlib.asynccontextmanager
async def accepting_server() -> AsyncIterator[int]:
    """A TCP server that accepts and closes at once (with a deep backlog): TCP probes pass."""
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, backlog=128)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_a_slow_service_does_not_delay_the_others() -> None:
    report = Recorder()
    rounds: list[Round] = []
    async with silent_server() as port, accepting_server() as open_port:
        fast = [service(f"fast-{i}", [{"kind": "tcp", "port": open_port, "timeout": "2s"}],
                        interval="100ms") for i in range(8)]
        slow = service("slow", [{"kind": "http", "url": f"http://127.0.0.1:{port}/", "timeout": "500ms"}],
                       interval="100ms", failure_threshold=100)
        task = asyncio.create_task(HealthPoller([slow, *fast], report, rounds.append).run())
        try:
            await eventually(lambda: _async(sum(r.service == "slow" for r in rounds) >= 4))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    slow_rounds = [i for i, r in enumerate(rounds) if r.service == "slow"]
    for before, after in itertools.pairwise(slow_rounds):
        between = [r.service for r in rounds[before + 1:after]]
        for policy in fast:
            assert between.count(policy.name) >= 2, (policy.name, between)
    slow_ticks = [r.tick for r in rounds if r.service == "slow"]
    assert all(b - a > 1 for a, b in itertools.pairwise(slow_ticks)), slow_ticks
    assert [r for r in rounds if r.service == "slow"][-1].skipped > 0
    for policy in fast:
        ticks = [r.tick for r in rounds if r.service == policy.name]
        assert ticks == sorted(set(ticks))
        assert all(r.healthy for r in rounds if r.service == policy.name)
    assert report.detections == []


async def test_a_service_still_down_after_its_recovery_ended_is_reported_again(
    demo_service: DemoService, http: httpx.AsyncClient
) -> None:
    """The service fired and never recovered (its recovery was resolved or aborted with the
    service still down): every `repeat_every` it is reported again, instead of never."""
    policy = demo_policy(demo_service, failure_threshold=2, recovery_threshold=2, cooldown="60s")
    assert policy.health_poll.repeat_every.total_seconds() == 300
    watch = ServiceWatch(policy.health_poll)
    demo_service.inject("unhealthy")
    clock = 0.0
    fired = []
    for _ in range(8):  # rounds 1 s apart, then one long after: all failing, probed for real
        results = [await run_probe(http, spec) for spec in policy.probes]
        clock += 1.0 if len(fired) < 7 else 300.0
        fired.append(watch.observe(all(r.healthy for r in results), clock))
    assert fired == [False, True, False, False, False, False, False, True]
    assert watch.state == "fired"
    quiet = demo_policy(demo_service, failure_threshold=2, repeat_every="0s")
    never = ServiceWatch(quiet.health_poll)
    assert [never.observe(False, t) for t in (1.0, 2.0, 1000.0, 5000.0)] == [False, True, False, False]
