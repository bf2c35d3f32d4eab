"""Delivering validated detections to recoveries: signal-with-start for firing, signal for resolved."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.mapping import PlannedReport
from gateway.metrics import GatewayMetrics
from gateway.schemas import IngestOutcome, IngestResult
from gateway.temporal import Delivery, TemporalGateway
from models.detection import MAX_REPORT_BATCH_BYTES, MAX_REPORTS_PER_BATCH

Send = Callable[[list[PlannedReport]], Awaitable[Delivery]]
"""Deliver reports of one recovery in one call: the recovery's id, whether the call started it,
and which reports were repeats of an ended run's (not sent)."""

Answer = tuple[str, IngestOutcome]
"""The recovery's id and what happened to one report: started, joined or repeat."""

Waiting = tuple[PlannedReport, asyncio.Future[Answer]]
"""A report queued for its recovery's next call, and where its caller waits for the answer."""


@dataclass
class _Mailbox:
    waiting: list[Waiting] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


def serialized_size(report: PlannedReport) -> int:
    """Bytes of the report's detection as Temporal's payload carries it (pydantic JSON)."""
    return len(report.detection.model_dump_json().encode())


def next_batch(waiting: list[Waiting]) -> list[Waiting]:
    """The longest prefix of `waiting` one call may carry: at most MAX_REPORTS_PER_BATCH reports
    and MAX_REPORT_BATCH_BYTES of serialized detections, and always at least one report.

    Reports of many notifications pile up behind a call in flight; without the byte bound the
    next call could exceed what Temporal accepts (it refuses requests above 4 MB), and every
    notification in it would fail, be retried by Alertmanager, and fail again.
    """
    batch = waiting[:1]
    size = serialized_size(waiting[0][0])
    for item in waiting[1:MAX_REPORTS_PER_BATCH]:
        size += serialized_size(item[0])
        if size > MAX_REPORT_BATCH_BYTES:
            break
        batch.append(item)
    return batch


class ReportCoalescer:
    """One call at a time per recovery; the firing reports that arrive for it meanwhile go
    together in the next call, in arrival order.

    Concurrent signal-with-starts on one workflow id contend for the same workflow lock on the
    server, and an Alertmanager group of many instances of one service, or several groups
    flushing at once, would send exactly that. Each caller still gets its own answer: the first
    report sent by a call that started the recovery is "started", a repeat of a report the
    recovery's ended run counted "repeat" (not sent), every other one "joined". A call
    carries at most MAX_REPORTS_PER_BATCH reports and MAX_REPORT_BATCH_BYTES (`next_batch`);
    the rest wait for the next call.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._mailboxes: dict[str, _Mailbox] = {}

    async def submit(self, report: PlannedReport) -> Answer:
        """Deliver one report; the recovery's id and what happened to the report.

        The recovery's sender task takes everything queued when it gets to run, so the alerts
        of one webhook POST for one recovery (an Alertmanager group) go in a single call.
        """
        mailbox = self._mailboxes.setdefault(report.workflow_id, _Mailbox())
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_mark_retrieved)
        mailbox.waiting.append((report, answer))
        if mailbox.sender is None:
            mailbox.sender = asyncio.create_task(self._drain(report.workflow_id, mailbox))
        return await asyncio.shield(answer)

    async def _drain(self, workflow_id: str, mailbox: _Mailbox) -> None:
        batch: list[Waiting] = []
        try:
            while mailbox.waiting:
                batch = next_batch(mailbox.waiting)
                del mailbox.waiting[:len(batch)]
                try:
                    delivery = await self._send([report for report, _ in batch])
                except Exception as err:
                    for _, answer in batch:
                        answer.set_exception(err)
                    continue
                starter = delivery.started
                for report, answer in batch:
                    if report.detection.detection_id in delivery.repeats:
                        answer.set_result((delivery.workflow_id, "repeat"))
                    else:
                        answer.set_result((delivery.workflow_id, "started" if starter else "joined"))
                        starter = False
        finally:
            del self._mailboxes[workflow_id]
            for _, answer in batch + mailbox.waiting:
                if not answer.done():
                    answer.cancel()


def _mark_retrieved(answer: asyncio.Future[Answer]) -> None:
    """A caller that went away (its client hung up) leaves its answer unread; read it here so
    a failed delivery is not reported a second time as a never-retrieved exception."""
    if not answer.cancelled():
        answer.exception()


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
        self._coalescer = ReportCoalescer(self._send)

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

    async def _send(self, reports: list[PlannedReport]) -> Delivery:
        async with self._limit:
            return await self.temporal.start_or_join(
                [r.detection for r in reports], reports[0].policy, self.dry_run)

    async def _fire(self, report: PlannedReport, source: str) -> IngestResult:
        workflow_id, outcome = await self._coalescer.submit(report)
        if outcome == "started":
            self.metrics.started.labels(report.detection.service).inc()
        else:
            self.metrics.deduplicated.labels(source).inc()
        return IngestResult(workflow_id=workflow_id, outcome=outcome,
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
