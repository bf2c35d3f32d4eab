"""The health poller: probes each service on its interval and reports after N straight failures.

One report per failure streak: after firing it stays quiet until the service is healthy again,
so a long outage starts one recovery, not one per probe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
import structlog

from activities.probes import run_probe
from models.detection import Detection
from models.policy import ServicePolicy
from models.probes import ProbeResult

Reporter = Callable[[Detection, ServicePolicy], Awaitable[None]]
"""Where detections go: in medkit, signal-with-start of the service's recovery."""


class ServiceWatch:
    """The failure streak of one service."""

    def __init__(self, policy: ServicePolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.fired = False

    def observe(self, results: list[ProbeResult]) -> bool:
        """Record one probe round; True when this round should fire a detection."""
        if all(r.healthy for r in results):
            self.failures = 0
            self.fired = False
            return False
        self.failures += 1
        if self.fired or self.failures < self.policy.health_poll.failure_threshold:
            return False
        self.fired = True
        return True


def detection_for(policy: ServicePolicy, results: list[ProbeResult], failures: int) -> Detection:
    """The detection the poller reports for a failing service."""
    failing = [r.evidence() for r in results if not r.healthy]
    return Detection(
        detection_id=str(uuid.uuid4()), service=policy.name, source="health_poller",
        severity=policy.health_poll.severity,
        summary=f"{failures} consecutive failed probe rounds: {'; '.join(failing)}",
        detected_at=datetime.now(UTC),
    )


async def poll_service(policy: ServicePolicy, http: httpx.AsyncClient, report: Reporter) -> None:
    """Probe one service forever on its interval (sleeping to the next tick, so it does not drift)."""
    log = structlog.get_logger("medkit.poller").bind(service=policy.name)
    watch = ServiceWatch(policy)
    interval = policy.health_poll.interval.total_seconds()
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while True:
        results = list(await asyncio.gather(*(run_probe(http, spec) for spec in policy.probes)))
        if watch.observe(results):
            detection = detection_for(policy, results, watch.failures)
            log.warning("service failing, reporting", failures=watch.failures)
            try:
                await report(detection, policy)
            except Exception as err:  # a failed report is retried on the next failing round
                log.error("report failed", error=str(err))
                watch.fired = False
        next_tick += interval
        await asyncio.sleep(max(0.0, next_tick - loop.time()))


async def run_health_poller(policies: list[ServicePolicy], report: Reporter) -> None:
    """Poll every service that has health polling enabled, concurrently, until cancelled."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
        await asyncio.gather(*(
            poll_service(policy, http, report) for policy in policies if policy.health_poll.enabled
        ))
