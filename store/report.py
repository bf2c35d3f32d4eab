"""Reliability figures per service from the incident store: MTTD, MTTR, outcomes, availability.

`load_runs` reads the few columns the report needs; everything else here is pure computation
over those rows and a fixed `now`, so every figure can be checked exactly. docs/reporting.md
defines each figure and why it is computed the way it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, or_
from sqlmodel import Session, col, select

from models.phases import Outcome, Phase
from store.incidents import IncidentRow, TimelineRow


@dataclass(frozen=True)
class RunTimes:
    """What the report needs of one recovery run: its service, how it ended, and its moments.

    `reported_at` is the run's first timeline entry (the detection that started it, as the
    recovery recorded it) and `assessing_at` its first transition into Assessing; either is None
    when the stored timeline lacks it.
    """

    service: str
    outcome: str | None
    dry_run: bool
    started_at: datetime
    ended_at: datetime | None
    reported_at: datetime | None = None
    assessing_at: datetime | None = None


@dataclass(frozen=True)
class Objective:
    """A service's availability objective: a percentage over a rolling window ending now."""

    availability: float
    window: timedelta


@dataclass(frozen=True)
class ServiceReport:
    """One service's figures. Counts and times cover runs started in [since, until]; availability
    covers the objective's window ending at `until` (or [since, until] without an objective)."""

    service: str
    since: datetime
    until: datetime
    incidents: int
    recovered: int
    resolved: int
    dismissed: int
    aborted: int
    open: int
    dry_run: int
    mttd_seconds: float | None
    mttr_p50_seconds: float | None
    mttr_p95_seconds: float | None
    availability_window_seconds: float
    downtime_seconds: float
    availability_percent: float
    slo_target_percent: float | None
    error_budget_seconds: float | None
    error_budget_left_seconds: float | None
    error_budget_left_percent: float | None


def percentile(values: Iterable[float], percent: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least `percent`% of the values at
    or below it, so it is always a duration that really happened. None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def downtime_seconds(runs: Iterable[RunTimes], start: datetime, end: datetime) -> float:
    """Seconds of [start, end] during which at least one of the runs was an incident.

    Each run counts from its start to its end (to `end` while still open), clipped to the
    window. Overlapping runs of the service (two incident keys at once) count once: the union of
    the intervals, not their sum. Dismissed runs are not downtime: their probes found the
    service healthy, so the report was not confirmed."""
    intervals = sorted(
        (max(run.started_at, start), min(run.ended_at or end, end))
        for run in runs if run.outcome != Outcome.DISMISSED.value
    )
    total = timedelta(0)
    covered_until = start
    for begin, finish in intervals:
        begin = max(begin, covered_until)
        if finish > begin:
            total += finish - begin
            covered_until = finish
    return total.total_seconds()


def service_report(service: str, runs: list[RunTimes], since: datetime, now: datetime,
                   objective: Objective | None) -> ServiceReport:
    """The figures of one service from all its runs that overlap either window."""
    started = [run for run in runs if since <= run.started_at <= now]
    outcomes = Counter(run.outcome for run in started)
    detections = [(run.assessing_at - run.reported_at).total_seconds() for run in started
                  if run.reported_at is not None and run.assessing_at is not None]
    repairs = [(run.ended_at - run.started_at).total_seconds() for run in started
               if run.outcome == Outcome.RECOVERED.value and run.ended_at is not None]
    window = objective.window if objective is not None else now - since
    window_seconds = window.total_seconds()
    down = downtime_seconds(runs, now - window, now)
    budget = left = left_percent = None
    if objective is not None:
        budget = (100 - objective.availability) / 100 * window_seconds
        left = budget - down
        left_percent = left / budget * 100
    return ServiceReport(
        service=service, since=since, until=now, incidents=len(started),
        recovered=outcomes[Outcome.RECOVERED.value], resolved=outcomes[Outcome.RESOLVED.value],
        dismissed=outcomes[Outcome.DISMISSED.value], aborted=outcomes[Outcome.ABORTED.value],
        open=outcomes[None], dry_run=sum(1 for run in started if run.dry_run),
        mttd_seconds=sum(detections) / len(detections) if detections else None,
        mttr_p50_seconds=percentile(repairs, 50), mttr_p95_seconds=percentile(repairs, 95),
        availability_window_seconds=window_seconds, downtime_seconds=down,
        availability_percent=(1 - down / window_seconds) * 100,
        slo_target_percent=objective.availability if objective is not None else None,
        error_budget_seconds=budget, error_budget_left_seconds=left, error_budget_left_percent=left_percent,
    )


def build_report(runs: Iterable[RunTimes], services: Iterable[str], since: datetime, now: datetime,
                 objectives: Mapping[str, Objective]) -> list[ServiceReport]:
    """One report per service, in name order; a service without runs has clean figures."""
    by_service: dict[str, list[RunTimes]] = {name: [] for name in services}
    for run in runs:
        if run.service in by_service:
            by_service[run.service].append(run)
    return [service_report(name, by_service[name], since, now, objectives.get(name))
            for name in sorted(by_service)]


def load_runs(engine: Engine, earliest: datetime, service: str | None = None) -> list[RunTimes]:
    """Every run (of `service`, if given) still open or ended at or after `earliest`, with the
    moments of its first report and of its first transition into Assessing."""
    still_relevant = or_(col(IncidentRow.ended_at).is_(None), col(IncidentRow.ended_at) >= earliest)
    incidents = select(IncidentRow).where(still_relevant)
    if service is not None:
        incidents = incidents.where(IncidentRow.service == service)
    first_moments = select(TimelineRow.workflow_id, TimelineRow.run_id, TimelineRow.at,
                           TimelineRow.kind).join(
        IncidentRow, and_(col(IncidentRow.workflow_id) == col(TimelineRow.workflow_id),
                          col(IncidentRow.run_id) == col(TimelineRow.run_id)),
    ).where(still_relevant, or_(
        and_(col(TimelineRow.idx) == 0, col(TimelineRow.kind) == "report"),
        and_(col(TimelineRow.to_phase) == Phase.ASSESSING.value,
             col(TimelineRow.from_phase) != Phase.ASSESSING.value),
    ))
    if service is not None:
        first_moments = first_moments.where(IncidentRow.service == service)
    reported: dict[tuple[str, str], datetime] = {}
    assessing: dict[tuple[str, str], datetime] = {}
    with Session(engine) as session:
        rows = list(session.exec(incidents).all())
        for workflow_id, run_id, at, kind in session.exec(first_moments).all():
            moments = reported if kind == "report" else assessing
            key = (workflow_id, run_id)
            moments[key] = min(at, moments.get(key, at))
    return [RunTimes(service=row.service, outcome=row.outcome, dry_run=row.dry_run,
                     started_at=row.started_at, ended_at=row.ended_at,
                     reported_at=reported.get((row.workflow_id, row.run_id)),
                     assessing_at=assessing.get((row.workflow_id, row.run_id)))
            for row in rows]


def known_services(engine: Engine) -> set[str]:
    """Every service the store has a run of, at any time."""
    with Session(engine) as session:
        return set(session.exec(select(IncidentRow.service).distinct()).all())
