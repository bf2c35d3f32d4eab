"""`medkit watch`'s service: the health poller, the host forecaster and the anomaly watcher at once.

All three report through the same `Reporter` (signal-with-start of the service's recovery), so
a detection from any of them starts or joins a recovery exactly as one from the gateway does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from detectors.anomaly_watch import AnomalyWatcher
from detectors.health_poller import HealthPoller, Reporter, Round
from detectors.host_forecaster import Sampler, run_host_forecaster
from models.policy import AnomalySeriesSpec, AnomalyWatchSpec, PolicyFile
from models.urls import redact_url


class Watch:
    """Every detector the policy file configures, ready to run together."""

    def __init__(self, policy: PolicyFile, report: Reporter, host_sampler: Sampler | None = None,
                 on_round: Callable[[Round], None] | None = None) -> None:
        self.policy = policy
        self.report = report
        self.host_sampler = host_sampler
        self.poller = HealthPoller(policy.services, report, on_round)
        by_name = {s.name: s for s in policy.services}
        series = policy.anomaly.series if policy.anomaly else []
        pulled = [s for s in series if not s.pushed]
        self.pushed: list[AnomalySeriesSpec] = [s for s in series if s.pushed]
        """Pushed series are scored by `medkit serve` (it receives their points), never here."""
        self.anomaly = (AnomalyWatcher(AnomalyWatchSpec(series=pulled), by_name, report)
                        if pulled else None)

    @property
    def empty(self) -> bool:
        """Whether the policy gives this watch nothing to do."""
        return not self.poller.policies and self.policy.host is None and self.anomaly is None

    def why_empty(self) -> str:
        """Why the policy gives this watch nothing to do, naming what it does have (pushed series)."""
        reason = "health polling is disabled for every service and there is no host: section"
        if not self.pushed:
            return f"{reason} or anomaly: section"
        names = ", ".join(s.name for s in self.pushed)
        return (f"{reason}, and every anomaly: series is pushed ({names}): medkit serve scores "
                "pushed series, not medkit watch")

    def describe(self) -> list[str]:
        """One progress line per thing watched, for the start-up banner."""
        lines = []
        for p in self.poller.policies:
            poll = p.health_poll
            lines.append(
                f"health: {p.name} every {poll.interval.total_seconds():g}s, {len(p.probes)} probe(s); "
                f"fires after {poll.failure_threshold} failed rounds, re-arms after "
                f"{poll.recovery_threshold} healthy, cool-down {poll.cooldown.total_seconds():g}s"
            )
        host = self.policy.host
        if host is not None:
            limits = [f"cpu>{host.cpu_percent:g}%" if host.cpu_percent else "",
                      f"memory>{host.memory_percent:g}%" if host.memory_percent else "",
                      *(f"disk {d.path}>{d.max_percent:g}%{' (forecast)' if d.predict else ''}"
                        for d in host.disks)]
            lines.append(f"host: {', '.join(x for x in limits if x)} every "
                         f"{host.interval.total_seconds():g}s, forecast horizon "
                         f"{host.horizon.total_seconds():g}s -> service {host.service}")
        if self.anomaly is not None:
            for watch in self.anomaly.series.values():
                s = watch.spec
                origin = (f"{redact_url(s.prometheus)} every {s.interval.total_seconds():g}s"
                          if s.query and s.prometheus else "pushed")
                lines.append(f"anomaly: {s.name} ({origin}), threshold {s.threshold:g} "
                             f"-> service {s.service}")
        for s in self.pushed:
            lines.append(f"anomaly: {s.name} is pushed, so not here: medkit serve scores it "
                         f"(POST /v1/series/{s.name}/points) -> service {s.service}")
        return lines

    async def run(self) -> None:
        """Run every configured detector until cancelled; if one crashes, the others stop too."""
        jobs: list[Coroutine[Any, Any, None]] = [self.poller.run()] if self.poller.policies else []
        if self.policy.host is not None:
            host = self.policy.host
            jobs.append(run_host_forecaster(host, self.policy.service(host.service), self.report,
                                            self.host_sampler))
        if self.anomaly is not None:
            jobs.append(self.anomaly.run())
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
