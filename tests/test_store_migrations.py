"""Schema migrations: fresh, from a pre-versioning ledger, from an old version, concurrent, atomic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text
from sqlmodel import SQLModel

import store.incidents  # noqa: F401  (registers the incident tables in SQLModel.metadata)
from store import migrations
from store.ledger import ActionLedger, ActionRecord, create_store_engine
from store.migrations import LATEST_VERSION, Migration, SchemaTooNew, current_version, migrate

pytest_plugins = ["tests.postgres_fixture"]

OLD_ROW = ("w/r/1", "w", "web", "restart_process", "2025-01-01 00:00:00", "{}")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """medkit's engine on that database, nothing created yet."""
    engine = create_store_engine(database_url)
    yield engine
    engine.dispose()


def version(engine: Engine) -> int:
    """The database's schema version."""
    with engine.connect() as conn:
        return current_version(conn)


def insert_old_row(engine: Engine) -> None:
    """A ledger row written by an older medkit."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO action_ledger (key, workflow_id, service, activity, started_at, "
                          "progress_json) VALUES (:k, :w, :s, :a, :t, :p)"),
                     dict(zip("kwsatp", OLD_ROW, strict=True)))


def test_a_fresh_database_gets_every_step(engine: Engine) -> None:
    assert version(engine) == 0
    assert migrate(engine) == LATEST_VERSION
    with engine.connect() as conn:
        steps = conn.execute(text("SELECT version FROM schema_version ORDER BY version")).scalars().all()
    assert steps == [step.version for step in migrations.MIGRATIONS]


def test_migrating_twice_changes_nothing(engine: Engine) -> None:
    migrate(engine)
    assert migrate(engine) == LATEST_VERSION
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == LATEST_VERSION


def test_an_old_version_database_is_migrated_forward_keeping_its_rows(engine: Engine) -> None:
    assert migrate(engine, target=1) == 1
    insert_old_row(engine)
    assert not inspect(engine).has_table("incidents")
    assert migrate(engine) == LATEST_VERSION
    tables = set(inspect(engine).get_table_names())
    assert {"incidents", "incident_timeline", "incident_decisions", "incident_notifications"} <= tables
    assert "ix_action_ledger_budget" in {ix["name"] for ix in inspect(engine).get_indexes("action_ledger")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT key FROM action_ledger")).scalars().all() == ["w/r/1"]


def test_a_ledger_from_before_schema_versions_is_adopted(database_url: str, engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=[ActionRecord.__table__])  # type: ignore[attr-defined]
    insert_old_row(engine)
    ledger = ActionLedger(database_url)
    try:
        assert version(ledger.engine) == LATEST_VERSION
        assert ledger.begin("w/r/1", workflow_id="w", service="web", activity="x").activity == (
            "restart_process")
    finally:
        ledger.engine.dispose()


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    migrate(engine)
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in inspector.get_table_names():
            continue
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name: c.nullable for c in table.columns}, table.name
        db_indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        assert {ix.name for ix in table.indexes} <= db_indexes, table.name
    assert {"action_ledger", "incidents", "incident_timeline"} <= set(inspector.get_table_names())


def test_a_failing_step_leaves_the_database_as_it_was(engine: Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(engine)

    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    steps = (*migrations.MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", broken))
    monkeypatch.setattr(migrations, "MIGRATIONS", steps)
    monkeypatch.setattr(migrations, "LATEST_VERSION", LATEST_VERSION + 1)
    with pytest.raises(Exception, match="no_such_table"):
        migrate(engine, target=LATEST_VERSION + 1)
    assert version(engine) == LATEST_VERSION
    assert not inspect(engine).has_table("half_done")


def test_a_database_from_a_newer_medkit_is_refused(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_version (version, description, applied_at) "
                          "VALUES (99, 'future', '2030-01-01 00:00:00')"))
    with pytest.raises(SchemaTooNew, match="version 99"):
        migrate(engine)


def test_workers_starting_together_migrate_once(database_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start_worker() -> None:
        engine = create_store_engine(database_url)
        try:
            barrier.wait()
            migrate(engine)
        except BaseException as err:
            errors.append(err)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start_worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == LATEST_VERSION
    finally:
        engine.dispose()


def journal_modes_opened_together(url: str, connections: int) -> tuple[list[str], list[BaseException]]:
    """Open `connections` engines on one database at the same instant; their journal modes."""
    errors: list[BaseException] = []
    modes: list[str] = []
    barrier = threading.Barrier(connections)

    def open_database() -> None:
        engine = create_store_engine(url)
        try:
            barrier.wait()
            with engine.connect() as conn:
                modes.append(str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()))
        except BaseException as err:
            errors.append(err)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=open_database) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return modes, errors


def test_many_processes_opening_a_new_sqlite_file_together_all_get_wal(tmp_path: Path) -> None:
    """SQLite skips the busy handler for a journal-mode change; medkit must wait, not fail."""
    for attempt in range(10):
        modes, errors = journal_modes_opened_together(f"sqlite:///{tmp_path}/fresh-{attempt}.db", 8)
        assert errors == []
        assert modes == ["wal"] * 8
