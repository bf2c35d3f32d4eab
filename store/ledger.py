"""The action ledger: one row per side effect, keyed by workflow run and activity id.

A retried activity (same workflow id, run id and activity id) finds its row and either
returns the recorded result or resumes from the recorded progress, so a service is
never restarted, scaled or paged twice for one step.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, and_, event, func, make_url, or_
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from models.urls import REDACTED, SECRET_KEY
from store.migrations import as_utc, migrate

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's transaction before failing, unless its
engine was given a shorter wait (`with_busy_timeout`)."""

BUSY_TIMEOUT_OPTION = "medkit_lock_wait_ms"
"""The execution option `with_busy_timeout` sets: the lock wait of that engine's transactions."""


class LedgerBusy(Exception):
    """Another writer held the database's lock for longer than a ledger call could wait: the
    call wrote nothing, and trying again later may succeed."""


POSTGRES_LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's SQLSTATE when a statement gave up waiting for a lock (`lock_timeout`)."""


def is_lock_timeout(err: BaseException) -> bool:
    """Whether `err` is a lock wait that ran out: SQLite's "database is locked" (SQLITE_BUSY, the
    busy timeout), or PostgreSQL's lock_not_available (the transaction's `lock_timeout`)."""
    orig = err.orig if isinstance(err, OperationalError) else err
    if getattr(orig, "sqlstate", None) == POSTGRES_LOCK_NOT_AVAILABLE:
        return True
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    return getattr(orig, "sqlite_errorcode", sqlite3.SQLITE_BUSY) == sqlite3.SQLITE_BUSY and \
        "locked" in str(orig)


class ActionRecord(SQLModel, table=True):
    """A side effect medkit started, with what it recorded on the way and its final result."""

    __tablename__ = "action_ledger"

    key: str = Field(primary_key=True)
    workflow_id: str = Field(index=True)
    service: str = Field(index=True)
    activity: str
    started_at: datetime
    progress_json: str = "{}"
    result_json: str | None = None
    finished_at: datetime | None = None


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    """WAL (readers never block the writer), a busy timeout, and SQLAlchemy owns BEGIN."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    # WAL with synchronous=NORMAL: commits survive a crash of the process, and skip an fsync each.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch the database to WAL, waiting out other connections that hold a lock meanwhile.

    SQLite does not call the busy handler for a journal-mode change, so on a fresh database
    several processes starting together would fail with "database is locked" at once; the
    mode is persistent, so only the first connection of a new file ever has to wait here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_begin(conn: Any) -> None:
    """Take the write lock up front: a deferred read-then-write transaction can fail with BUSY.

    First the connection gets the lock wait its engine asks for (`with_busy_timeout`), since
    engines sharing a pool share its connections; the PRAGMA runs only when that changes."""
    busy = int(conn.get_execution_options().get(BUSY_TIMEOUT_OPTION, SQLITE_BUSY_TIMEOUT_MS))
    if conn.info.get(BUSY_TIMEOUT_OPTION, SQLITE_BUSY_TIMEOUT_MS) != busy:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={busy}")
        conn.info[BUSY_TIMEOUT_OPTION] = busy
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def with_busy_timeout(engine: Engine, milliseconds: int) -> Engine:
    """The engine (same pool, same events) with its transactions waiting at most `milliseconds`
    for another writer's lock (SQLite's busy timeout, PostgreSQL's `lock_timeout`).

    For work bounded by a timeout shorter than SQLITE_BUSY_TIMEOUT_MS: failing with "database
    is locked" inside the timeout ends the attempt, where a longer wait would outlive it and
    leave its thread to write after the attempt was given up."""
    return engine.execution_options(**{BUSY_TIMEOUT_OPTION: milliseconds})


def _postgres_begin(conn: Any) -> None:
    """Bound the transaction's wait for a lock another session holds, as SQLite's busy timeout
    does: the engine's `with_busy_timeout`, else SQLITE_BUSY_TIMEOUT_MS. Without it a write
    waited for a locked row or table for as long as the lock was held, outliving any attempt."""
    wait = int(conn.get_execution_options().get(BUSY_TIMEOUT_OPTION, SQLITE_BUSY_TIMEOUT_MS))
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(wait, 1)}")


def _sqlite_connect_reader(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    """A busy timeout, writes refused, and SQLAlchemy owns BEGIN; the journal mode is left as the
    workers set it (changing it is a write)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _sqlite_begin_reader(conn: Any) -> None:
    """A deferred transaction: one consistent snapshot for all its reads, and no write lock, so
    under WAL a long read (a report over a big store) never holds up a worker's writes."""
    conn.exec_driver_sql("BEGIN")


class InvalidDatabaseURL(Exception):
    """A database URL SQLAlchemy cannot parse. The message never quotes the URL or a piece of it:
    a piece read as the port or the host can be the password."""


def sqlite_url(path: Path) -> URL:
    """The URL of the SQLite file at `path`, whatever its name holds.

    Built from parts, never formatted into a string: parsed back, `?` would start a query
    (`/tmp/a?b/medkit.db` is `/tmp/a`) and `%20` would be decoded, naming another file."""
    return URL.create("sqlite", database=str(path))


def parse_database_url(text: str | URL) -> URL:
    """The parsed URL, or InvalidDatabaseURL (SQLAlchemy raises ValueError quoting the "port"
    it read, e.g. for `user@host:password`, and ArgumentError for what is no URL at all)."""
    if isinstance(text, URL):
        return text
    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        raise InvalidDatabaseURL(
            "expected e.g. sqlite:///path/medkit.db or postgresql+psycopg://user:password@host:5432/db, "
            "with any @ : / in the password %-encoded") from None


def shown_database_url(url: URL) -> str:
    """The URL as it may be printed or logged: its password hidden, and so the value of any
    secret-looking query parameter (`?password=...`, which libpq also reads)."""
    query = {key: REDACTED if SECRET_KEY.search(key) else value for key, value in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def create_store_engine(url: str | URL, *, read_only: bool = False) -> Engine:
    """An engine for medkit's database; SQLite gets WAL, a busy timeout and transactional DDL.

    `read_only` is for the commands and the dashboard, which only read: their transactions
    refuse writes and, on SQLite, take no write lock (a worker's transactions all do, since
    theirs may write), so reading never makes a worker wait.
    """
    url = parse_database_url(url)
    if url.get_backend_name() != "sqlite":
        options = {"postgresql_readonly": True} if read_only else {}
        engine = create_engine(url, pool_pre_ping=True, execution_options=options)
        if url.get_backend_name() == "postgresql" and not read_only:
            event.listen(engine, "begin", _postgres_begin)
        return engine
    engine = create_engine(url, connect_args={"check_same_thread": False,
                                              "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_connect_reader if read_only else _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin_reader if read_only else _sqlite_begin)
    return engine


class ActionLedger:
    """Idempotency records for side effects, in any SQLAlchemy database (SQLite by default)."""

    def __init__(self, url: str | URL, *, wait_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
        self._engine: Engine = create_store_engine(url)
        self._lock = threading.Lock()
        self.wait_ms = wait_ms
        """How long a call given no `deadline` waits for the lock (this process's other ledger
        calls, then another process's SQLite write lock) before it fails with LedgerBusy."""
        migrate(self._engine)

    @property
    def engine(self) -> Engine:
        """The database engine, shared with the incident store."""
        return self._engine

    @contextmanager
    def _writing(self, deadline: float | None) -> Iterator[Session]:
        """A session holding this process's ledger lock, whose transaction waits for another
        writer's lock only until `deadline` (time.monotonic(); default `wait_ms` from now).

        Past the deadline the call fails with LedgerBusy, having written nothing: a caller with a
        timeout of its own passes a deadline inside it, so the call never outlives its attempt."""
        if deadline is None:
            deadline = time.monotonic() + self.wait_ms / 1000
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise LedgerBusy("the action ledger is busy: this worker's other ledger calls held it")
        try:
            left_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            with Session(with_busy_timeout(self._engine, left_ms)) as session:
                yield session
        except OperationalError as err:
            if is_lock_timeout(err):
                raise LedgerBusy("the action ledger is busy: database is locked by another "
                                 "writer") from err
            raise
        finally:
            self._lock.release()

    def begin(
        self, key: str, *, workflow_id: str, service: str, activity: str,
        deadline: float | None = None,
    ) -> ActionRecord:
        """The record for `key`, created if this is the first attempt."""
        with self._writing(deadline) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                record = ActionRecord(
                    key=key, workflow_id=workflow_id, service=service, activity=activity,
                    started_at=datetime.now(UTC),
                )
                session.add(record)
                session.commit()
                session.refresh(record)
            session.expunge(record)
            return record

    def progress(self, key: str, *, deadline: float | None = None, **values: Any) -> None:
        """Record how far a side effect got, for a retry to resume from."""
        with self._writing(deadline) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                raise KeyError(key)
            merged = {**json.loads(record.progress_json), **values}
            record.progress_json = json.dumps(merged)
            session.add(record)
            session.commit()

    def finish(self, key: str, result_json: str, *, deadline: float | None = None) -> None:
        """Record the final result; later attempts with the same key return it."""
        with self._writing(deadline) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                raise KeyError(key)
            if record.result_json is None:
                record.result_json = result_json
                record.finished_at = datetime.now(UTC)
                session.add(record)
                session.commit()

    def count_actions(self, service: str, activities: list[str], since: datetime) -> int:
        """`count_actions` in this ledger's database."""
        return count_actions(self._engine, service, activities, since)


def count_actions(engine: Engine, service: str, activities: list[str], since: datetime) -> int:
    """How many of these activities acted on `service` since then, across its incidents:
    finished since then, or started since then and not finished (failed attempts never
    finish their row, and a failed restart still stopped the process)."""
    if not activities:
        return 0
    since = as_utc(since)
    finished_at = col(ActionRecord.finished_at)
    query = select(func.count()).select_from(ActionRecord).where(
        ActionRecord.service == service,
        col(ActionRecord.activity).in_(activities),
        or_(finished_at >= since, and_(finished_at.is_(None), col(ActionRecord.started_at) >= since)),
    )
    with Session(engine) as session:
        return int(session.exec(query).one())
