"""What the operator dashboard shows, gathered in one place: health scores, open recoveries with
their pending decisions, recent incidents, MTTR per service and the pushed series' state.

Each source fails on its own: with Temporal unreachable the health scores and incidents still
show (and the snapshot says why recoveries are missing), and likewise for the incident store.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from detectors.health_poller import HealthBoard
from gateway.series import PushedSeries
from gateway.temporal import RecoveryRow, TemporalFailed, TemporalGateway, TemporalUnavailable
from models.health import FleetHealth
from models.phases import Outcome
from models.status import PendingDecision, RecoveryStatus, TimelineEntry
from store.incidents import IncidentRow, IncidentStore
from workers.client import RecoveryNotFound

OPEN_RECOVERIES_QUERY = "WorkflowType = 'RecoveryWorkflow' AND ExecutionStatus = 'Running'"
"""Visibility query of the recoveries still running (fixed text: nothing user-supplied)."""

MAX_OPEN = 100
"""Open recoveries the dashboard lists at most (newest first), each costing one status query."""

STATUS_CONCURRENCY = 10
"""Status queries in flight at once, so a busy fleet does not flood the frontend."""

STATUS_BUDGET = 3.0
"""Seconds one refresh waits for the recoveries' status queries. A query is answered by a worker
of the recovery's task queue, so with that worker down it would hang until the Temporal timeout;
past the budget the recovery is shown from its search attributes instead, saying why."""

RECENT_INCIDENTS = 20
"""Incidents the dashboard lists."""

MTTR_WINDOW = timedelta(days=30)
"""Incidents whose repair time makes up the MTTR: the last 30 days."""

MTTR_ROWS = 2000
"""Incidents of the window read at most for MTTR (the newest)."""

REPAIRED = {Outcome.RECOVERED.value, Outcome.RESOLVED.value}
"""Outcomes that end an outage: medkit recovered the service, or an operator resolved it.
Dismissed (healthy before medkit acted) and aborted runs repaired nothing, so they are not MTTR."""

RECENT_TIMELINE = 5
"""Timeline entries shown per open recovery (the latest)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenRecovery(_Out):
    """A running recovery as the dashboard shows it."""

    workflow_id: str
    service: str
    incident_key: str
    phase: str
    severity: str | None = None
    started_at: datetime
    age_seconds: float
    current_step: str | None = None
    attempts: int = 0
    max_attempts: int = 0
    dry_run: bool = False
    pending_decision: PendingDecision | None = None
    recent: list[TimelineEntry] = Field(default_factory=list)
    temporal_url: str | None = None
    status_error: str | None = Field(
        default=None, description="set when no worker answered the status query: the row then comes "
                                  "from the recovery's search attributes only")


class IncidentItem(_Out):
    """One incident of the store (a recovery run, running or ended)."""

    workflow_id: str
    run_id: str
    service: str
    incident_key: str
    severity: str | None
    phase: str
    outcome: str | None
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None
    temporal_url: str | None = None


class ServiceMttr(_Out):
    """Mean time to repair of one service over the MTTR window."""

    service: str
    incidents: int = Field(description="repaired incidents (Recovered or Resolved) in the window")
    mttr_seconds: float


class SeriesState(_Out):
    """A pushed anomaly series held by this gateway."""

    series: str
    service: str
    points: int
    last_point_at: datetime | None
    cooling_until: datetime | None = Field(description="set after a detection, until its cool-down ends")
    threshold: float


class DashboardSnapshot(_Out):
    """Everything one dashboard refresh shows."""

    generated_at: datetime
    namespace: str
    temporal_ui: str | None
    health: FleetHealth
    recoveries: list[OpenRecovery]
    recoveries_error: str | None = None
    incidents: list[IncidentItem]
    mttr: list[ServiceMttr]
    incidents_error: str | None = None
    series: list[SeriesState]


def temporal_workflow_url(ui: str | None, namespace: str, workflow_id: str,
                          run_id: str | None = None) -> str | None:
    """The Temporal UI page of a workflow: of its run `run_id` (a past incident's: the workflow
    id alone opens the latest run, and one id holds every incident of its service and key), or
    of its latest run; None when no UI address is configured."""
    if not ui:
        return None
    page = (f"{ui.rstrip('/')}/namespaces/{quote(namespace, safe='')}/workflows/"
            f"{quote(workflow_id, safe='')}")
    return f"{page}/{quote(run_id, safe='')}/history" if run_id else page


def mean_time_to_repair(rows: list[IncidentRow]) -> list[ServiceMttr]:
    """Per service, the mean duration of its repaired incidents (those without an end skipped)."""
    durations: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.outcome in REPAIRED and row.duration_seconds is not None:
            durations[row.service].append(row.duration_seconds)
    return [ServiceMttr(service=service, incidents=len(values), mttr_seconds=sum(values) / len(values))
            for service, values in sorted(durations.items())]


IncidentSource = IncidentStore | Callable[[], IncidentStore]
"""The incident store, or how to open it: an opener is retried on each refresh until it succeeds,
so a gateway started before any worker created the database shows incidents once one has."""


class Overview:
    """Builds dashboard snapshots from the gateway's health board, Temporal and incident store."""

    def __init__(self, board: HealthBoard, temporal: TemporalGateway, pushed: PushedSeries,
                 incidents: IncidentSource | None, temporal_ui: str | None) -> None:
        self.board = board
        self.temporal = temporal
        self.pushed = pushed
        self.incidents = incidents
        self.temporal_ui = temporal_ui
        self._opening = asyncio.Lock()

    def _url(self, workflow_id: str, run_id: str | None = None) -> str | None:
        return temporal_workflow_url(self.temporal_ui, self.temporal.target.namespace, workflow_id,
                                     run_id)

    async def snapshot(self) -> DashboardSnapshot:
        """One refresh: every source gathered concurrently."""
        now = datetime.now(UTC)
        (recoveries, recoveries_error), (incidents, mttr, incidents_error) = await asyncio.gather(
            self._open_recoveries(now), self._incidents(now))
        return DashboardSnapshot(
            generated_at=now, namespace=self.temporal.target.namespace, temporal_ui=self.temporal_ui,
            health=self.board.fleet(), recoveries=recoveries, recoveries_error=recoveries_error,
            incidents=incidents, mttr=mttr, incidents_error=incidents_error, series=self._series(),
        )

    async def _open_recoveries(self, now: datetime) -> tuple[list[OpenRecovery], str | None]:
        try:
            rows = await self.temporal.list_recoveries(OPEN_RECOVERIES_QUERY, MAX_OPEN)
        except (TemporalUnavailable, TemporalFailed) as err:
            return [], str(err)
        gate = asyncio.Semaphore(STATUS_CONCURRENCY)
        queries = [asyncio.create_task(self._status(row, gate)) for row in rows]
        if queries:
            await asyncio.wait(queries, timeout=STATUS_BUDGET)
        found: list[OpenRecovery] = []
        for row, query in zip(rows, queries, strict=True):
            if not query.done():
                query.cancel()
                found.append(self._from_row(row, now, f"no worker answered the status query within "
                                                      f"{STATUS_BUDGET:g}s (is a worker polling the "
                                                      f"recovery's task queue?)"))
                continue
            outcome = query.result()
            if isinstance(outcome, RecoveryStatus):
                found.append(self._from_status(outcome, now))
            elif outcome is not None:
                found.append(self._from_row(row, now, outcome))
        return sorted(found, key=lambda r: r.started_at, reverse=True), None

    async def _status(self, row: RecoveryRow, gate: asyncio.Semaphore) -> RecoveryStatus | str | None:
        """The recovery's status; None when it ended or vanished meanwhile; else why it has none."""
        async with gate:
            try:
                status = await self.temporal.status(row.workflow_id)
            except RecoveryNotFound:
                return None
            except (TemporalUnavailable, TemporalFailed) as err:
                return str(err)
            return None if status.closed_by_temporal else status

    def _from_status(self, status: RecoveryStatus, now: datetime) -> OpenRecovery:
        return OpenRecovery(
            workflow_id=status.workflow_id, service=status.service, incident_key=status.incident_key,
            phase=status.phase.value, severity=status.severity.value if status.severity else None,
            started_at=status.started_at, age_seconds=max(0.0, (now - status.started_at).total_seconds()),
            current_step=status.current_step, attempts=status.attempts,
            max_attempts=status.max_attempts, dry_run=status.dry_run,
            pending_decision=status.pending_decision, recent=status.timeline[-RECENT_TIMELINE:],
            temporal_url=self._url(status.workflow_id),
        )

    def _from_row(self, row: RecoveryRow, now: datetime, why: str) -> OpenRecovery:
        """The recovery as its search attributes and workflow id tell it, when its status is missing."""
        _, _, rest = row.workflow_id.partition(":")
        id_service, _, incident_key = rest.partition(":")
        started_at = datetime.fromisoformat(row.started_at)
        return OpenRecovery(
            workflow_id=row.workflow_id, service=row.service or id_service or "?",
            incident_key=incident_key or "?", phase=row.phase or "unknown", severity=row.severity,
            started_at=started_at, age_seconds=max(0.0, (now - started_at).total_seconds()),
            temporal_url=self._url(row.workflow_id), status_error=why,
        )

    async def _store(self) -> IncidentStore:
        """The store, opening it now if only its opener is known (its error says why not)."""
        async with self._opening:
            source = self.incidents
            if source is None:
                raise LookupError("no incident store configured (medkit serve --state-dir or "
                                  "MEDKIT_DATABASE_URL)")
            if not isinstance(source, IncidentStore):
                self.incidents = source = await asyncio.to_thread(source)
            return source

    async def _incidents(self, now: datetime) -> tuple[list[IncidentItem], list[ServiceMttr], str | None]:
        try:
            store = await self._store()
        except Exception as err:  # not configured, no database yet, unreachable: say so, retry later
            return [], [], str(err) or type(err).__name__
        try:
            rows = await asyncio.to_thread(store.recent, None, now - MTTR_WINDOW, MTTR_ROWS)
        except Exception as err:  # any database failure only blanks this part of the dashboard
            return [], [], f"incident store unavailable: {type(err).__name__}"
        items = [IncidentItem(
            workflow_id=row.workflow_id, run_id=row.run_id, service=row.service,
            incident_key=row.incident_key, severity=row.severity, phase=row.phase,
            outcome=row.outcome, started_at=row.started_at, ended_at=row.ended_at,
            duration_seconds=row.duration_seconds,
            temporal_url=self._url(row.workflow_id, row.run_id),
        ) for row in rows[:RECENT_INCIDENTS]]
        return items, mean_time_to_repair(rows), None

    def _series(self) -> list[SeriesState]:
        return [SeriesState(series=name, service=watch.spec.service, points=watch.points,
                            last_point_at=watch.last, threshold=watch.spec.threshold,
                            cooling_until=watch.quiet_until if watch.quiet_until and watch.last
                            and watch.quiet_until > watch.last else None)
                for name, watch in sorted(self.pushed.watches.items())]
