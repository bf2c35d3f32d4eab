"""The health poller: probes each service on its own fixed schedule and reports failure streaks.

Firing is damped (see `ServiceWatch`): a streak of `failure_threshold` failed rounds fires once,
the service must then pass `recovery_threshold` rounds in a row before it can fire again
(hysteresis, so a flapping service starts one recovery, not one per streak), and no service fires
twice within its `cooldown`. Every service runs on absolute ticks (start + k * interval), so a slow
probe never delays another service, and a round that overruns skips the ticks it missed instead
of drifting or bursting; each probe is bounded by its own timeout.

Every round also feeds a `HealthBoard`, which keeps each service's 0-100 health score and its
healthy/degraded/unhealthy status (formula in docs/dashboard.md) for `GET /v1/health` and the
dashboard. A poller without a reporter only keeps scores: that is how `medkit serve` runs it.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog

from activities.probes import bounded_probe
from models.detection import Detection
from models.health import STATUS_RANK, FleetHealth, HealthStatus, ProbeHealth, ServiceHealth
from models.policy import HealthPollSpec, ServicePolicy
from models.probes import HttpProbe, ProbeResult, ProbeSpec

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
        self.last_report: float | None = None
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
        if self.fired:
            return self._repeat_due(now)
        if self.failures < self.spec.failure_threshold:
            return False
        if self.quiet_until is not None and now < self.quiet_until:
            self.suppressed += 1
            return False
        self.fired = True
        self.quiet_until = now + self.spec.cooldown.total_seconds()
        self.last_report = now
        return True

    def _repeat_due(self, now: float) -> bool:
        """Whether a service that fired and never recovered is due to be reported again: the
        report joins its recovery if one still runs, and starts one if the last ended (resolved,
        aborted) with the service still down, which would otherwise go unwatched."""
        every = self.spec.repeat_every.total_seconds()
        if every <= 0 or self.last_report is None or now - self.last_report < every:
            return False
        self.last_report = now
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


SCORE_WINDOW = 12
"""Probe rounds a service's score averages over: one minute at the default 5 s interval, long
enough that one slow round does not swing the status, short enough to show a recovery quickly."""

HEALTHY_SCORE = 90.0
"""A service scoring at least this (and failing no probe now) is healthy."""

UNHEALTHY_SCORE = 50.0
"""A service scoring below this is unhealthy, as is one whose failure streak reached its
`failure_threshold` (the poller's own firing condition), whatever its average."""

FAST_SHARE = 0.5
"""A healthy probe answering within this share of its latency budget scores 100; from there its
score falls linearly to SLOW_SCORE at the budget."""

SLOW_SCORE = 50.0
"""What a healthy probe scores at (or beyond) its latency budget: up, but slow."""


def latency_budget_ms(spec: ProbeSpec) -> float:
    """The latency a probe is measured against: an HTTP probe's `max_latency_ms` if set, else the
    probe's timeout (beyond which it fails anyway)."""
    if isinstance(spec, HttpProbe) and spec.max_latency_ms is not None:
        return spec.max_latency_ms
    return spec.timeout.total_seconds() * 1000.0


def probe_score(result: ProbeResult, budget_ms: float) -> float:
    """0 for a failing probe; 100 for a healthy one within FAST_SHARE of its budget, falling
    linearly to SLOW_SCORE at the budget (and staying there beyond it)."""
    if not result.healthy:
        return 0.0
    if result.latency_ms is None:
        return 100.0
    share = result.latency_ms / budget_ms
    if share <= FAST_SHARE:
        return 100.0
    slope = (100.0 - SLOW_SCORE) / (1.0 - FAST_SHARE)
    return max(SLOW_SCORE, 100.0 - slope * (share - FAST_SHARE))


def status_for(score: float, failing_rounds: int, failure_threshold: int) -> HealthStatus:
    """Unhealthy at a full failure streak or below UNHEALTHY_SCORE; degraded while any round is
    failing or below HEALTHY_SCORE; healthy otherwise."""
    if failing_rounds >= failure_threshold or score < UNHEALTHY_SCORE:
        return HealthStatus.UNHEALTHY
    if failing_rounds > 0 or score < HEALTHY_SCORE:
        return HealthStatus.DEGRADED
    return HealthStatus.HEALTHY


@dataclass
class _ServiceScore:
    """The rolling state of one service on the board."""

    policy: ServicePolicy
    rounds: deque[float]
    failing_rounds: int = 0
    last_round_at: datetime | None = None
    probes: list[ProbeHealth] | None = None


class HealthBoard:
    """Each polled service's health score over its last `window` rounds, and the fleet's status.

    A round scores the mean of its probes' scores (`probe_score`); a service scores the mean of
    its rounds in the window. Pure bookkeeping, no I/O: the poller records, readers snapshot.
    """

    def __init__(self, policies: list[ServicePolicy], window: int = SCORE_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 round, not {window}")
        self.window = window
        self._services = {p.name: _ServiceScore(p, deque(maxlen=window))
                          for p in policies if p.health_poll.enabled}

    def record(self, service: str, results: list[ProbeResult], at: datetime) -> ServiceHealth:
        """Add one probe round of a service (results in the order of its policy's probes)."""
        state = self._services[service]
        budgets = {spec.name: latency_budget_ms(spec) for spec in state.policy.probes}
        probes = []
        for result in results:
            budget = budgets.get(result.probe)
            score = probe_score(result, budget) if budget is not None else (
                100.0 if result.healthy else 0.0)
            probes.append(ProbeHealth(probe=result.probe, kind=result.kind, healthy=result.healthy,
                                      score=round(score, 1), latency_ms=result.latency_ms,
                                      threshold_ms=budget, detail=result.detail[:500]))
        state.rounds.append(sum(p.score for p in probes) / len(probes) if probes else 0.0)
        healthy = bool(probes) and all(p.healthy for p in probes)
        state.failing_rounds = 0 if healthy else state.failing_rounds + 1
        state.last_round_at = at
        state.probes = probes
        return self.service(service)

    def service(self, service: str) -> ServiceHealth:
        """A snapshot of one service's health (KeyError for a service not polled)."""
        state = self._services[service]
        threshold = state.policy.health_poll.failure_threshold
        if not state.rounds:
            return ServiceHealth(service=service, status=HealthStatus.UNKNOWN,
                                 failure_threshold=threshold)
        score = round(sum(state.rounds) / len(state.rounds), 1)
        return ServiceHealth(
            service=service, status=status_for(score, state.failing_rounds, threshold), score=score,
            rounds=len(state.rounds), failing_rounds=state.failing_rounds,
            failure_threshold=threshold, last_round_at=state.last_round_at,
            probes=list(state.probes or []),
        )

    def fleet(self) -> FleetHealth:
        """Every service's snapshot, with the fleet's worst status and lowest score."""
        services = [self.service(name) for name in self._services]
        scores = [s.score for s in services if s.score is not None]
        status = max((s.status for s in services), key=STATUS_RANK.__getitem__,
                     default=HealthStatus.UNKNOWN)
        return FleetHealth(status=status, score=min(scores) if scores else None,
                           window=self.window, services=services)


class HealthPoller:
    """Polls every service whose health polling is enabled, each on its own schedule, keeping
    their scores on `board`; with `report` None it only keeps scores and never reports."""

    def __init__(self, policies: list[ServicePolicy], report: Reporter | None,
                 on_round: Callable[[Round], None] | None = None,
                 board: HealthBoard | None = None) -> None:
        self.policies = [p for p in policies if p.health_poll.enabled]
        self.report = report
        self.on_round = on_round
        self.watches = {p.name: ServiceWatch(p.health_poll) for p in self.policies}
        self.board = board if board is not None else HealthBoard(self.policies)

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
            fired = watch.observe(healthy, loop.time()) and self.report is not None
            scored = self.board.record(policy.name, results, datetime.now(UTC))
            log.debug("probe round", tick=tick, healthy=healthy, state=watch.state,
                      failures=watch.failures, skipped=skipped, score=scored.score,
                      status=scored.status.value)
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
        assert self.report is not None, "a score-only poller never fires"
        detection = detection_for(policy, results, watch.failures)
        log.warning("service failing, reporting", failures=watch.failures,
                    detection_id=detection.detection_id)
        try:
            await asyncio.wait_for(self.report(detection, policy), REPORT_TIMEOUT)
        except Exception as err:  # retried on the next failing round
            log.error("report failed; will retry", error=str(err) or type(err).__name__)
            watch.report_failed()


async def run_health_poller(policies: list[ServicePolicy], report: Reporter,
                            board: HealthBoard | None = None) -> None:
    """Poll every service that has health polling enabled, concurrently, until cancelled,
    keeping their scores on `board` when one is given (the dashboard's)."""
    await HealthPoller(policies, report, board=board).run()
