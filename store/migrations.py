"""medkit's database schema as an ordered list of migration steps, applied at startup.

Each step's DDL is frozen here (it never follows later model changes), so a database of any
older version is brought forward by exactly the steps it lacks. The steps run in one
transaction, serialised between processes (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
lock), and each applied step is recorded in `schema_version`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
    inspect,
    select,
    text,
)


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC time; a naive one is taken to be UTC already (not the local time
    `astimezone` would assume, nor PostgreSQL's session time zone, as a naive value would be)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC; a naive value is taken to be UTC already."""
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer medkit than this one."""


@dataclass(frozen=True)
class Migration:
    """One schema step: its version number, what it does, and the DDL that does it."""

    version: int
    description: str
    apply: Callable[[Connection], None]


_PG_LOCK_ID = 0x6D65646B6974  # "medkit": serialises concurrent migrations on PostgreSQL.

_SCHEMA_VERSION = Table(
    "schema_version", MetaData(),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)


def _create(conn: Connection, *tables: Table) -> None:
    """Create tables and their indexes unless they exist (a pre-versioning ledger may)."""
    for table in tables:
        table.create(conn, checkfirst=True)


def _v1_action_ledger(conn: Connection) -> None:
    """The action ledger exactly as medkit created it before schema versions existed."""
    ledger = Table(
        "action_ledger", MetaData(),
        Column("key", String, primary_key=True),
        Column("workflow_id", String, nullable=False, index=True),
        Column("service", String, nullable=False, index=True),
        Column("activity", String, nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("progress_json", String, nullable=False),
        Column("result_json", String),
        Column("finished_at", DateTime(timezone=True)),
    )
    _create(conn, ledger)


def _v2_incident_store(conn: Connection) -> None:
    """Incidents, their timelines, operator decisions and notifications."""
    meta = MetaData()
    run = [Column("workflow_id", String(200), primary_key=True),
           Column("run_id", String(100), primary_key=True)]
    incidents = Table(
        "incidents", meta, *run,
        Column("service", String(63), nullable=False, index=True),
        Column("incident_key", String(100), nullable=False),
        Column("severity", String(20)),
        Column("category", String(100)),
        Column("phase", String(40), nullable=False),
        Column("outcome", String(20)),
        Column("dry_run", Boolean, nullable=False),
        Column("started_at", UTCDateTime, nullable=False, index=True),
        Column("ended_at", UTCDateTime),
        Column("duration_seconds", Float),
        Column("reports", Integer, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("max_attempts", Integer, nullable=False),
        Column("escalations", Integer, nullable=False),
        Column("timeline_length", Integer, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )

    def entry_table(name: str, *columns: Column[Any]) -> Table:
        return Table(name, meta,
                     Column("workflow_id", String(200), primary_key=True),
                     Column("run_id", String(100), primary_key=True),
                     Column("idx", Integer, primary_key=True, autoincrement=False),
                     Column("at", UTCDateTime, nullable=False), *columns)

    timeline = entry_table(
        "incident_timeline",
        Column("from_phase", String(40), nullable=False),
        Column("to_phase", String(40), nullable=False),
        Column("reason", Text, nullable=False),
        Column("actor", String(200), nullable=False),
        Column("kind", String(20), nullable=False),
    )
    decisions = entry_table(
        "incident_decisions",
        Column("operator", String(200), nullable=False, index=True),
        Column("decision", String(20), nullable=False),
        Column("via", String(20), nullable=False),
        Column("reason", Text, nullable=False),
    )
    notifications = entry_table(
        "incident_notifications",
        Column("route", String(200), nullable=False),
        Column("delivered", Boolean, nullable=False),
        Column("detail", Text, nullable=False),
    )
    _create(conn, incidents, timeline, decisions, notifications)


def _v3_budget_index(conn: Connection) -> None:
    """Index the ledger for counting a service's recent finished actions (remediation budgets)."""
    ledger = Table("action_ledger", MetaData(), Column("service", String), Column("activity", String),
                   Column("finished_at", DateTime))
    Index("ix_action_ledger_budget", ledger.c.service, ledger.c.activity,
          ledger.c.finished_at).create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "action ledger", _v1_action_ledger),
    Migration(2, "incident store", _v2_incident_store),
    Migration(3, "ledger index for remediation budgets", _v3_budget_index),
)
"""Every schema step in order; append new steps, never edit an applied one."""

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The schema version a database is at; 0 if medkit never migrated it."""
    if not inspect(conn).has_table(_SCHEMA_VERSION.name):
        return 0
    version = conn.execute(select(func.max(_SCHEMA_VERSION.c.version))).scalar()
    return int(version or 0)


def migrate(engine: Engine, target: int = LATEST_VERSION) -> int:
    """Apply the steps between the database's version and `target` in one transaction."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        _SCHEMA_VERSION.create(conn, checkfirst=True)
        version = current_version(conn)
        if version > LATEST_VERSION:
            raise SchemaTooNew(f"the database schema is at version {version}, newer than this "
                               f"medkit knows ({LATEST_VERSION}): upgrade medkit")
        for step in MIGRATIONS:
            if version < step.version <= target:
                step.apply(conn)
                conn.execute(_SCHEMA_VERSION.insert().values(
                    version=step.version, description=step.description, applied_at=datetime.now(UTC)))
                version = step.version
        return version
