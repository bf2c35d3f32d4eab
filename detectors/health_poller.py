"""The health poller: probes each service on its own fixed schedule and reports failure streaks.

Firing is damped (see `ServiceWatch`): a streak of `failure_threshold` failed rounds fires once,
the service must then pass `recovery_threshold` rounds in a row before it can fire again
(hysteresis, so a flapping service starts one recovery, not one per streak), and no service fires
twice within its `cooldown`. Every service runs on absolute ticks (start + k * interval), so a slow
probe never delays another service, and a round that overruns skips the ticks it missed instead
of drifting or bursting; each probe is bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog

from activities.probes import bounded_probe
from models.detection import Detection
from models.policy import HealthPollSpec, ServicePolicy
from models.probes import ProbeResult

Reporter = Callable[[Detection, ServicePolicy], Awaitable[None]]
"""Where detections go: in medkit, signal-with-start of the service's recovery."""


REPORT_TIMEOUT = 15.0
"""Seconds a report (a signal-with-start) may take before it counts as failed and is retried."""


class ServiceWatch:
    """The firing decision of one service: streak threshold, hysteresis and cool-down.

    `now` is any monotonic clock in seconds, so the decision can be driven with a fake clock.
    """

    def __init__(self, spec: HealthPollSpec) -> None:
        self.spec = spec
        self.failures = 0
        self.successes = 0
        self.fired = False
        self.quiet_until: float | None = None
        self.suppressed = 0

    def observe(self, healthy: bool, now: float) -> bool:
        """Record one probe round; True when this round should fire a detection."""
        if healthy:
            self.failures = 0
            self.successes += 1
            if self.fired and self.successes >= self.spec.recovery_threshold:
                self.fired = False
            return False
        self.successes = 0
        self.failures += 1
        if self.fired or self.failures < self.spec.failure_threshold:
            return False
        if self.quiet_until is not None and now < self.quiet_until:
            self.suppressed += 1
            return False
        self.fired = True
        self.quiet_until = now + self.spec.cooldown.total_seconds()
        return True

    def report_failed(self) -> None:
        """The detection never reached Temporal: re-arm so the next failing round reports again."""
        self.fired = False
        self.quiet_until = None

    @property
    def state(self) -> str:
        """One word for logs: ok, failing, fired or cooling (a streak held back by the cool-down)."""
        if self.fired:
            return "fired"
        if self.failures >= self.spec.failure_threshold:
            return "cooling"
        return "failing" if self.failures else "ok"


@dataclass(frozen=True)
class Round:
    """One completed probe round of one service, for observers (logs, tests, metrics)."""

    service: str
    tick: int
    skipped: int
    healthy: bool
    fired: bool


def detection_for(policy: ServicePolicy, results: list[ProbeResult], failures: int) -> Detection:
    """The detection the poller reports for a failing service."""
    failing = [r for r in results if not r.healthy]
    return Detection(
        detection_id=str(uuid.uuid4()), service=policy.name, source="health_poller",
        severity=policy.health_poll.severity,
        summary=(f"{failures} consecutive failed probe rounds: "
                 f"{'; '.join(r.evidence() for r in failing)}")[:2000],
        labels={"failures": str(failures), "failing_probes": ",".join(r.probe for r in failing)},
        detected_at=datetime.now(UTC),
    )


class HealthPoller:
    """Polls every service whose health polling is enabled, each on its own schedule."""

    def __init__(self, policies: list[ServicePolicy], report: Reporter,
                 on_round: Callable[[Round], None] | None = None) -> None:
        self.policies = [p for p in policies if p.health_poll.enabled]
        self.report = report
        self.on_round = on_round
        self.watches = {p.name: ServiceWatch(p.health_poll) for p in self.policies}

    async def run(self) -> None:
        """Poll until cancelled."""
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            await asyncio.gather(*(self._poll(policy, http) for policy in self.policies))

    async def _poll(self, policy: ServicePolicy, http: httpx.AsyncClient) -> None:
        log = structlog.get_logger("medkit.poller").bind(service=policy.name)
        watch = self.watches[policy.name]
        interval = policy.health_poll.interval.total_seconds()
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = skipped = 0
        while True:
            await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))
            results = list(await asyncio.gather(*(bounded_probe(http, s) for s in policy.probes)))
            healthy = all(r.healthy for r in results)
            fired = watch.observe(healthy, loop.time())
            log.debug("probe round", tick=tick, healthy=healthy, state=watch.state,
                      failures=watch.failures, skipped=skipped)
            if fired:
                await self._report(policy, watch, results, log)
            if self.on_round is not None:
                self.on_round(Round(policy.name, tick, skipped, healthy, fired))
            following = max(tick + 1, math.floor((loop.time() - start) / interval) + 1)
            if following > tick + 1:
                log.info("probe round overran its interval; skipping ticks",
                         skipped=following - tick - 1)
            skipped += following - tick - 1
            tick = following

    async def _report(self, policy: ServicePolicy, watch: ServiceWatch, results: list[ProbeResult],
                      log: structlog.stdlib.BoundLogger) -> None:
        detection = detection_for(policy, results, watch.failures)
        log.warning("service failing, reporting", failures=watch.failures,
                    detection_id=detection.detection_id)
        try:
            await asyncio.wait_for(self.report(detection, policy), REPORT_TIMEOUT)
        except Exception as err:  # retried on the next failing round
            log.error("report failed; will retry", error=str(err) or type(err).__name__)
            watch.report_failed()


async def run_health_poller(policies: list[ServicePolicy], report: Reporter) -> None:
    """Poll every service that has health polling enabled, concurrently, until cancelled."""
    await HealthPoller(policies, report).run()
