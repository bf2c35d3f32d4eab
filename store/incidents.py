"""The incident store: every recovery run, its timeline, operator decisions and notifications.

It shares the action ledger's database and engine, so `action_ledger` is the incidents'
actions table. Writes are idempotent upserts keyed by workflow id, run id and timeline
index: recording the same status twice, or an older one after a newer one, changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, func, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, select

from models.incident_record import IncidentRecord, IncidentRecorded
from models.status import TimelineEntry
from store.ledger import ActionRecord
from store.migrations import UTCDateTime

_DECISION = re.compile(r"^(approve|abort|resolve|retry) \((signal|update)\): (.*)$", re.DOTALL)
_DELIVERED = re.compile(r"^notified (\S+): (.*)$", re.DOTALL)
_FAILED = re.compile(r"^notification to (\S+) failed: (.*)$", re.DOTALL)


class IncidentRow(SQLModel, table=True):
    """One recovery run: where it is or how it ended, and its counters."""

    __tablename__ = "incidents"

    workflow_id: str = Field(primary_key=True)
    run_id: str = Field(primary_key=True)
    service: str = Field(index=True)
    incident_key: str
    severity: str | None = None
    category: str | None = None
    phase: str
    outcome: str | None = None
    dry_run: bool
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_seconds: float | None = None
    reports: int
    attempts: int
    max_attempts: int
    escalations: int
    timeline_length: int
    updated_at: datetime = Field(sa_type=UTCDateTime)


class TimelineRow(SQLModel, table=True):
    """One timeline entry (a transition, report, probe, action, decision, ...) of a run."""

    __tablename__ = "incident_timeline"

    workflow_id: str = Field(primary_key=True)
    run_id: str = Field(primary_key=True)
    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_type=UTCDateTime)
    from_phase: str
    to_phase: str
    reason: str
    actor: str
    kind: str


class DecisionRow(SQLModel, table=True):
    """An operator decision the recovery accepted; `idx` is its timeline entry."""

    __tablename__ = "incident_decisions"

    workflow_id: str = Field(primary_key=True)
    run_id: str = Field(primary_key=True)
    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_type=UTCDateTime)
    operator: str = Field(index=True)
    decision: str
    via: str
    reason: str


class NotificationRow(SQLModel, table=True):
    """A notification sent (or that failed) to one route; `idx` is its timeline entry."""

    __tablename__ = "incident_notifications"

    workflow_id: str = Field(primary_key=True)
    run_id: str = Field(primary_key=True)
    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_type=UTCDateTime)
    route: str
    delivered: bool
    detail: str


Entry = TypeVar("Entry", TimelineRow, DecisionRow, NotificationRow)


class IncidentNotFound(LookupError):
    """No incident matches the id, or the id matches several runs."""


class UnsupportedDatabase(RuntimeError):
    """The database has no upsert medkit knows how to use."""


@dataclass
class IncidentDetail:
    """An incident with everything recorded about it, actions from the ledger included."""

    incident: IncidentRow
    timeline: list[TimelineRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    notifications: list[NotificationRow] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)


def _table(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


NUL_STAND_IN = "\ufffd"
"""What a NUL character in recorded text is stored as. PostgreSQL refuses NUL in a text column,
and such text comes from outside (a detection's summary or labels, an operator's reason; JSON
carries it as `\\u0000`): one NUL would fail the run's every later write, since each write
carries every entry not stored yet. Both backends store the stand-in, so they hold the same text."""


def _storable(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with every NUL in its text values replaced by NUL_STAND_IN."""
    return {name: value.replace("\x00", NUL_STAND_IN) if isinstance(value, str) else value
            for name, value in row.items()}


def _entry_rows(record: IncidentRecord, start: int) -> tuple[list[dict[str, Any]], ...]:
    """Timeline, decision and notification rows for the timeline entries from `start` on."""
    run = {"workflow_id": record.status.workflow_id, "run_id": record.run_id}
    timeline: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for idx, entry in enumerate(record.status.timeline[start:], start=start):
        base = {**run, "idx": idx, "at": entry.at}
        timeline.append(_storable({
            **base, "from_phase": entry.from_phase.value, "to_phase": entry.to_phase.value,
            "reason": entry.reason, "actor": entry.actor, "kind": entry.kind}))
        decision = _decision(entry)
        if decision is not None:
            decisions.append(_storable({**base, **decision}))
        notification = _notification(entry)
        if notification is not None:
            notifications.append(_storable({**base, **notification}))
    return timeline, decisions, notifications


def _decision(entry: TimelineEntry) -> dict[str, Any] | None:
    """An accepted decision entry reads `<decision> (<signal|update>): <reason>`."""
    match = _DECISION.match(entry.reason) if entry.kind == "decision" else None
    if match is None:
        return None
    decision, via, reason = match.groups()
    return {"operator": entry.actor, "decision": decision, "via": via, "reason": reason}


def _notification(entry: TimelineEntry) -> dict[str, Any] | None:
    """A notification entry reads `notified <route>: <event>` or `notification to <route> failed: ...`."""
    if entry.kind != "notification":
        return None
    for pattern, delivered in ((_DELIVERED, True), (_FAILED, False)):
        match = pattern.match(entry.reason)
        if match is not None:
            return {"route": match.group(1), "delivered": delivered, "detail": match.group(2)}
    return None


CATEGORY_CHARS = 100
"""The `category` column's width (store/migrations.py). A category can be a detector's label,
up to 2000 characters: it is stored cut to this, or PostgreSQL would refuse the whole write."""


def _incident_row(record: IncidentRecord, now: datetime) -> dict[str, Any]:
    status = record.status
    ended = status.timeline[-1].at if status.phase.terminal and status.timeline else None
    return _storable({
        "workflow_id": status.workflow_id, "run_id": record.run_id, "service": status.service,
        "incident_key": status.incident_key, "severity": status.severity,
        "category": status.category and status.category[:CATEGORY_CHARS],
        "phase": status.phase.value, "outcome": status.outcome, "dry_run": status.dry_run,
        "started_at": status.started_at, "ended_at": ended,
        "duration_seconds": (ended - status.started_at).total_seconds() if ended else None,
        "reports": status.reports, "attempts": status.attempts, "max_attempts": status.max_attempts,
        "escalations": status.escalations, "timeline_length": len(status.timeline), "updated_at": now,
    })


def _not_older(stored: Table, new: Any) -> ColumnElement[bool]:
    """Whether the new status is at least as recent as the stored row: a longer timeline, or as
    long with at least as many reports (reports past the timeline's cap only raise the count).
    A late write (an attempt that timed out waiting for the database and committed after the
    next write) is refused whole."""
    return or_(stored.c.timeline_length < new.timeline_length,
               and_(stored.c.timeline_length == new.timeline_length, stored.c.reports <= new.reports))


class IncidentStore:
    """Reads and idempotent writes of incidents, in the action ledger's database."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise UnsupportedDatabase(f"the incident store needs SQLite or PostgreSQL, "
                                      f"not {engine.dialect.name}")
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @property
    def engine(self) -> Engine:
        """The database this store reads and writes, for read-only reports over its tables."""
        return self._engine

    def record(self, record: IncidentRecord, now: datetime) -> IncidentRecorded:
        """Upsert the run's row and add the timeline entries not stored yet, in one transaction."""
        incidents = _table(IncidentRow)
        row = _incident_row(record, now)
        upsert = self._insert(incidents).values(**row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[incidents.c.workflow_id, incidents.c.run_id],
            set_={name: upsert.excluded[name] for name in row if name not in ("workflow_id", "run_id")},
            where=_not_older(incidents, upsert.excluded),
        )
        with self._engine.begin() as conn:
            conn.execute(upsert)
            stored = self._stored_entries(conn, record)
            rows = _entry_rows(record, stored)
            timeline, decisions, notifications = rows
            added = self._insert_new(conn, _table(TimelineRow), timeline)
            self._insert_new(conn, _table(DecisionRow), decisions)
            self._insert_new(conn, _table(NotificationRow), notifications)
        return IncidentRecorded(new_entries=added, timeline_length=len(record.status.timeline))

    def _stored_entries(self, conn: Connection, record: IncidentRecord) -> int:
        timeline = _table(TimelineRow)
        query = select(func.count()).select_from(timeline).where(
            timeline.c.workflow_id == record.status.workflow_id, timeline.c.run_id == record.run_id)
        return int(conn.execute(query).scalar_one())

    def _insert_new(self, conn: Connection, table: Table, values: list[dict[str, Any]]) -> int:
        """Insert rows whose key is not stored yet; return how many were inserted."""
        if not values:
            return 0
        statement = self._insert(table).on_conflict_do_nothing(
            index_elements=[table.c.workflow_id, table.c.run_id, table.c.idx],
        ).returning(table.c.idx)
        return len(conn.execute(statement, values).all())

    def recent(self, service: str | None = None, since: datetime | None = None,
             limit: int = 100) -> list[IncidentRow]:
        """Incidents, most recent first, optionally of one service and started since a time."""
        query = select(IncidentRow)
        if service is not None:
            query = query.where(IncidentRow.service == service)
        if since is not None:
            query = query.where(col(IncidentRow.started_at) >= since)
        query = query.order_by(col(IncidentRow.started_at).desc(), col(IncidentRow.workflow_id),
                               col(IncidentRow.run_id)).limit(limit)
        with Session(self._engine) as session:
            return list(session.exec(query).all())

    def find(self, ident: str) -> IncidentRow:
        """The run named by `workflow-id/run-id`, a run id (either id may be a unique prefix of the
        run id), or the latest run of a workflow id."""
        workflow_id, _, run_id = ident.rpartition("/")
        query = select(IncidentRow)
        if workflow_id:
            query = query.where(IncidentRow.workflow_id == workflow_id,
                                col(IncidentRow.run_id).startswith(run_id, autoescape=True))
        else:
            query = query.where((col(IncidentRow.workflow_id) == ident)
                                | col(IncidentRow.run_id).startswith(ident, autoescape=True))
        with Session(self._engine) as session:
            rows = list(session.exec(query.order_by(col(IncidentRow.started_at).desc())).all())
        exact = [row for row in rows if ident in (row.workflow_id, row.run_id)
                 or (row.workflow_id, row.run_id) == (workflow_id, run_id)]
        if exact:
            return exact[0]
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise IncidentNotFound(f"no incident {ident!r} (give a workflow id, a run id or "
                                   "workflow-id/run-id; `medkit incidents` lists them)")
        runs = ", ".join(f"{row.workflow_id}/{row.run_id}" for row in rows[:5])
        raise IncidentNotFound(f"{ident!r} matches {len(rows)} runs ({runs}): give more of the run id")

    def detail(self, incident: IncidentRow) -> IncidentDetail:
        """The incident with its timeline, decisions, notifications and ledger actions, in order."""
        prefix = f"{incident.workflow_id}/{incident.run_id}/"
        actions = select(ActionRecord).where(
            ActionRecord.workflow_id == incident.workflow_id,
            col(ActionRecord.key).startswith(prefix, autoescape=True),
        ).order_by(col(ActionRecord.started_at))
        with Session(self._engine) as session:
            return IncidentDetail(
                incident=incident,
                timeline=_entries(session, TimelineRow, incident),
                decisions=_entries(session, DecisionRow, incident),
                notifications=_entries(session, NotificationRow, incident),
                actions=list(session.exec(actions).all()),
            )


def _entries(session: Session, model: type[Entry], incident: IncidentRow) -> list[Entry]:
    """A run's rows of one per-timeline-entry table, in timeline order."""
    table = _table(model)
    query = select(model).where(table.c.workflow_id == incident.workflow_id,
                                table.c.run_id == incident.run_id).order_by(table.c.idx)
    return list(session.exec(query).all())
