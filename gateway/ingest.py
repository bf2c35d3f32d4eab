"""Delivering validated detections to recoveries: signal-with-start for firing, signal for resolved."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from gateway.mapping import PlannedReport
from gateway.metrics import GatewayMetrics
from gateway.schemas import IngestResult
from gateway.temporal import TemporalGateway


class Ingestor:
    """Sends a batch that has already been validated as a whole, so nothing is half-rejected.

    Firing reports go first (concurrently, bounded); then resolved ones. A resolved alert
    whose incident is reported firing in the same batch is skipped: the problem persists.
    A failure part-way raises, and the caller answers 5xx; re-sending the batch is safe
    because recoveries are joined by workflow id and repeated reports are only counted.
    """

    def __init__(self, temporal: TemporalGateway, metrics: GatewayMetrics, dry_run: bool,
                 concurrency: int) -> None:
        self.temporal = temporal
        self.metrics = metrics
        self.dry_run = dry_run
        self._limit = asyncio.Semaphore(concurrency)

    async def deliver(self, reports: Sequence[PlannedReport], source: str) -> list[IngestResult]:
        """Deliver every report; the results are in the order of `reports`."""
        firing = [r for r in reports if r.detection.status == "firing"]
        firing_ids = {r.workflow_id for r in firing}
        results: dict[int, IngestResult] = {}
        firing_results = await self._all([self._fire(r, source) for r in firing])
        for report, result in zip(firing, firing_results, strict=True):
            results[id(report)] = result
        resolved = [r for r in reports if r.detection.status == "resolved"]
        to_signal = [r for r in resolved if r.workflow_id not in firing_ids]
        resolved_results = await self._all([self._resolve(r, source) for r in to_signal])
        for report, result in zip(to_signal, resolved_results, strict=True):
            results[id(report)] = result
        for report in resolved:
            if report.workflow_id in firing_ids:
                results[id(report)] = self._result(report, "superseded")
        for report in reports:
            self.metrics.received.labels(source, report.detection.status).inc()
        return [results[id(r)] for r in reports]

    async def _all(self, work: list[Awaitable[IngestResult]]) -> list[IngestResult]:
        outcomes = await asyncio.gather(*work, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [o for o in outcomes if isinstance(o, IngestResult)]

    async def _fire(self, report: PlannedReport, source: str) -> IngestResult:
        async with self._limit:
            workflow_id, started = await self.temporal.start_or_join(
                report.detection, report.policy, self.dry_run)
        if started:
            self.metrics.started.labels(report.detection.service).inc()
        else:
            self.metrics.deduplicated.labels(source).inc()
        return IngestResult(workflow_id=workflow_id, outcome="started" if started else "joined",
                            fingerprint=report.fingerprint or None)

    async def _resolve(self, report: PlannedReport, source: str) -> IngestResult:
        async with self._limit:
            running = await self.temporal.report_resolved(report.detection)
        (self.metrics.resolved_reported if running else self.metrics.resolved_ignored).labels(source).inc()
        return self._result(report, "resolved_reported" if running else "no_recovery")

    @staticmethod
    def _result(report: PlannedReport, outcome: str) -> IngestResult:
        return IngestResult.model_validate({"workflow_id": report.workflow_id, "outcome": outcome,
                                            "fingerprint": report.fingerprint or None})
