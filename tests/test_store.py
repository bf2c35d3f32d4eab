"""The incident store and the ledger's budget count, against SQLite and a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from models.incident_record import IncidentRecord
from models.phases import Outcome, Phase, Severity
from models.status import RecoveryStatus, TimelineEntry, TimelineKind
from store.incidents import (
    CATEGORY_CHARS,
    DecisionRow,
    IncidentNotFound,
    IncidentRow,
    IncidentStore,
    NotificationRow,
    TimelineRow,
)
from store.ledger import ActionLedger, ActionRecord, LedgerBusy

pytest_plugins = ["tests.postgres_fixture"]

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(database_url: str) -> Iterator[ActionLedger]:
    """The ledger, which creates and migrates the schema."""
    ledger = ActionLedger(database_url)
    yield ledger
    ledger.engine.dispose()


@pytest.fixture
def store(ledger: ActionLedger) -> IncidentStore:
    """The incident store on the ledger's engine."""
    return IncidentStore(ledger.engine)


def entry(n: int, reason: str, kind: TimelineKind = "transition", actor: str = "medkit",
          frm: Phase = Phase.ASSESSING, to: Phase = Phase.ASSESSING) -> TimelineEntry:
    """The n-th timeline entry, n seconds after T0."""
    return TimelineEntry(at=T0 + timedelta(seconds=n), from_phase=frm, to_phase=to, reason=reason,
                         actor=actor, kind=kind)


FULL_TIMELINE = [
    entry(0, "cli reported: down", "report", actor="cli", frm=Phase.DETECTED, to=Phase.DETECTED),
    entry(1, "assessing", frm=Phase.DETECTED, to=Phase.ASSESSING),
    entry(2, "severity major", "probe"),
    entry(3, "notified oncall: manual", "notification"),
    entry(4, "notification to slack failed: route 'slack' answered HTTP 404", "notification"),
    entry(5, "approve (signal): restart is safe", "decision", actor="alice"),
    entry(6, "retry requested: try again", "decision", actor="bob"),
    entry(7, "retry (update): try again", "decision", actor="bob"),
    entry(8, "ignored signal: cannot approve", "ignored", actor="carol"),
    entry(9, "restart: restarted pid 1 -> 2", "action"),
    entry(10, "healthy", frm=Phase.ASSESSING, to=Phase.RECOVERED),
]


def status(timeline: list[TimelineEntry], workflow_id: str = "recovery:web:health",
           service: str = "web") -> RecoveryStatus:
    """A status whose phase is where its timeline ends."""
    phase = timeline[-1].to_phase if timeline else Phase.DETECTED
    return RecoveryStatus(
        workflow_id=workflow_id, service=service, incident_key="health", phase=phase,
        severity=Severity.MAJOR, category="crash", attempts=1, max_attempts=3, reports=2,
        outcome=Outcome(phase.value) if phase.terminal else None, started_at=T0, timeline=timeline,
    )


def count(store_engine: ActionLedger, model: type[TimelineRow | DecisionRow | NotificationRow]) -> int:
    """Rows of one table."""
    with Session(store_engine.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def test_record_stores_run_timeline_decisions_and_notifications(
        ledger: ActionLedger, store: IncidentStore) -> None:
    recorded = store.record(IncidentRecord(run_id="run-1", status=status(FULL_TIMELINE)), T0)
    assert (recorded.new_entries, recorded.timeline_length) == (len(FULL_TIMELINE), len(FULL_TIMELINE))
    detail = store.detail(store.find("recovery:web:health"))
    incident = detail.incident
    assert (incident.phase, incident.outcome, incident.severity) == ("Recovered", "Recovered", "major")
    assert incident.started_at == T0 and incident.ended_at == T0 + timedelta(seconds=10)
    assert incident.duration_seconds == 10.0
    assert [row.reason for row in detail.timeline] == [e.reason for e in FULL_TIMELINE]
    assert [row.idx for row in detail.timeline] == list(range(len(FULL_TIMELINE)))
    assert detail.timeline[1].at == T0 + timedelta(seconds=1)
    assert [(d.operator, d.decision, d.via, d.reason) for d in detail.decisions] == [
        ("alice", "approve", "signal", "restart is safe"), ("bob", "retry", "update", "try again")]
    assert [(n.route, n.delivered, n.detail) for n in detail.notifications] == [
        ("oncall", True, "manual"), ("slack", False, "route 'slack' answered HTTP 404")]


def test_recording_again_adds_nothing(ledger: ActionLedger, store: IncidentStore) -> None:
    record = IncidentRecord(run_id="run-1", status=status(FULL_TIMELINE))
    store.record(record, T0)
    again = store.record(record, T0 + timedelta(minutes=1))
    assert again.new_entries == 0
    assert count(ledger, TimelineRow) == len(FULL_TIMELINE)
    assert count(ledger, DecisionRow) == 2
    assert count(ledger, NotificationRow) == 2


def test_each_transition_adds_only_its_new_entries(ledger: ActionLedger, store: IncidentStore) -> None:
    for length in range(1, len(FULL_TIMELINE) + 1):
        recorded = store.record(IncidentRecord(run_id="r", status=status(FULL_TIMELINE[:length])), T0)
        assert recorded.new_entries == 1
    assert count(ledger, TimelineRow) == len(FULL_TIMELINE)
    assert count(ledger, DecisionRow) == 2


def test_an_older_status_never_overwrites_a_newer_one(store: IncidentStore) -> None:
    store.record(IncidentRecord(run_id="r", status=status(FULL_TIMELINE)), T0)
    stale = store.record(IncidentRecord(run_id="r", status=status(FULL_TIMELINE[:3])), T0)
    assert stale.new_entries == 0
    incident = store.find("r")
    assert (incident.phase, incident.timeline_length) == ("Recovered", len(FULL_TIMELINE))


def test_a_running_incident_has_no_end(store: IncidentStore) -> None:
    store.record(IncidentRecord(run_id="r", status=status(FULL_TIMELINE[:3])), T0)
    incident = store.find("r")
    assert (incident.phase, incident.outcome, incident.ended_at, incident.duration_seconds) == (
        "Assessing", None, None, None)


def test_find_by_workflow_id_run_id_and_prefix(store: IncidentStore) -> None:
    first, second = status(FULL_TIMELINE), status(FULL_TIMELINE)
    second.started_at = T0 + timedelta(hours=1)
    store.record(IncidentRecord(run_id="aaaa-1111", status=first), T0)
    store.record(IncidentRecord(run_id="aaaa-2222", status=second), T0)
    assert store.find("recovery:web:health").run_id == "aaaa-2222"  # the latest run
    assert store.find("recovery:web:health/aaaa-1111").run_id == "aaaa-1111"
    assert store.find("aaaa-1").run_id == "aaaa-1111"
    with pytest.raises(IncidentNotFound, match="matches 2 runs"):
        store.find("aaaa")
    with pytest.raises(IncidentNotFound, match="no incident 'nope'"):
        store.find("nope")
    with pytest.raises(IncidentNotFound, match="no incident"):
        store.find("recovery:web:health/zzzz")


def test_recent_filters_by_service_and_start(store: IncidentStore) -> None:
    for n, service in enumerate(["web", "api", "web"]):
        record = status(FULL_TIMELINE, workflow_id=f"recovery:{service}:k{n}", service=service)
        record.started_at = T0 + timedelta(hours=n)
        store.record(IncidentRecord(run_id=f"r{n}", status=record), T0)
    assert [row.run_id for row in store.recent()] == ["r2", "r1", "r0"]
    assert [row.run_id for row in store.recent(service="web")] == ["r2", "r0"]
    assert [row.run_id for row in store.recent(since=T0 + timedelta(minutes=30))] == ["r2", "r1"]
    assert [row.run_id for row in store.recent(limit=1)] == ["r2"]


def test_detail_lists_the_runs_ledger_actions_only(ledger: ActionLedger, store: IncidentStore) -> None:
    store.record(IncidentRecord(run_id="r1", status=status(FULL_TIMELINE)), T0)
    mine = ledger.begin("recovery:web:health/r1/3", workflow_id="recovery:web:health", service="web",
                        activity="restart_process")
    ledger.finish(mine.key, '{"detail": "restarted"}')
    ledger.begin("recovery:web:health/r10/3", workflow_id="recovery:web:health", service="web",
                 activity="restart_process")
    ledger.begin("recovery:web:health/r1/4", workflow_id="recovery:web:health", service="web",
                 activity="notify")
    detail = store.detail(store.find("r1"))
    assert [a.key for a in detail.actions] == ["recovery:web:health/r1/3", "recovery:web:health/r1/4"]


def finished_action(ledger: ActionLedger, key: str, service: str, activity: str,
                    finished_at: datetime | None) -> None:
    """A ledger row that finished at the given time (None: still in progress)."""
    ledger.begin(key, workflow_id=f"recovery:{service}:k", service=service, activity=activity)
    if finished_at is None:
        return
    ledger.finish(key, "{}")
    with Session(ledger.engine) as session:
        record = session.get(ActionRecord, key)
        assert record is not None
        record.finished_at = finished_at
        session.add(record)
        session.commit()


def test_count_actions_counts_actions_of_the_service_in_the_window(ledger: ActionLedger) -> None:
    """Finished actions count from when they finished; one whose attempts failed (its row never
    finishes) or that is still running counts from when it started, since it acted."""
    now = datetime.now(UTC)
    finished_action(ledger, "a/1/1", "web", "restart_process", now - timedelta(minutes=5))
    finished_action(ledger, "b/1/1", "web", "restart_process", now - timedelta(minutes=50))
    finished_action(ledger, "c/1/1", "web", "run_command", now - timedelta(minutes=1))
    finished_action(ledger, "d/1/1", "web", "notify", now - timedelta(minutes=1))
    finished_action(ledger, "e/1/1", "web", "restart_process", now - timedelta(hours=3))
    finished_action(ledger, "f/1/1", "web", "restart_process", None)  # failed or running, started now
    finished_action(ledger, "h/1/1", "web", "restart_process", None)
    with Session(ledger.engine) as session:  # a failed one from long ago: outside the window
        record = session.get(ActionRecord, "h/1/1")
        assert record is not None
        record.started_at = now - timedelta(hours=2)
        session.add(record)
        session.commit()
    finished_action(ledger, "g/1/1", "api", "restart_process", now - timedelta(minutes=1))
    since = now - timedelta(hours=1)
    assert ledger.count_actions("web", ["restart_process"], since) == 3
    assert ledger.count_actions("web", ["restart_process", "run_command"], since) == 4
    assert ledger.count_actions("web", ["restart_process"], now - timedelta(minutes=10)) == 2
    assert ledger.count_actions("api", ["restart_process"], since) == 1
    assert ledger.count_actions("web", [], since) == 0
    local = since.astimezone(timezone(timedelta(hours=-5)))
    assert ledger.count_actions("web", ["restart_process"], local) == 3


def test_concurrent_writers_from_many_workers_never_duplicate(database_url: str) -> None:
    """Several engines (as separate workers would have) record growing timelines at once."""
    ActionLedger(database_url).engine.dispose()
    workers, workflows = 4, 6
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def worker(n: int) -> None:
        ledger = ActionLedger(database_url)
        store = IncidentStore(ledger.engine)
        try:
            barrier.wait()
            for length in range(1, len(FULL_TIMELINE) + 1):
                for w in range(workflows):
                    # every worker writes every workflow: each write races the others
                    record = status(FULL_TIMELINE[:length], workflow_id=f"recovery:s{w}:k",
                                    service=f"s{w}")
                    store.record(IncidentRecord(run_id=f"run-{w}", status=record), T0)
        except BaseException as err:
            errors.append(err)
        finally:
            ledger.engine.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ledger = ActionLedger(database_url)
    try:
        assert count(ledger, TimelineRow) == workflows * len(FULL_TIMELINE)
        assert count(ledger, DecisionRow) == workflows * 2
        with Session(ledger.engine) as session:
            rows = session.exec(select(IncidentRow)).all()
        assert len(rows) == workflows
        assert {row.timeline_length for row in rows} == {len(FULL_TIMELINE)}
    finally:
        ledger.engine.dispose()


def test_a_category_longer_than_its_column_is_stored_cut_not_refused(store: IncidentStore) -> None:
    """A detector's label can make the category 2000 characters long; PostgreSQL refused the
    whole write for the 100-character column, so the run never reached the store."""
    long = status(FULL_TIMELINE[:3]).model_copy(update={"category": "x" * 150})
    store.record(IncidentRecord(run_id="r1", status=long), T0)
    assert store.find("r1").category == "x" * CATEGORY_CHARS


def test_text_with_a_nul_character_is_stored_on_every_backend(store: IncidentStore) -> None:
    """A NUL can arrive in a detection's summary or label, or an operator's reason (JSON allows
    `\\u0000`). PostgreSQL refuses it in a text column, and the refusal failed every later write
    of the run too, since each write carries every entry not stored yet: the run never reached
    the store. It is stored as U+FFFD on both backends, so they hold the same text."""
    timeline = [
        FULL_TIMELINE[0].model_copy(update={"reason": "http reported: bad\x00byte"}),
        *FULL_TIMELINE[1:5],
        FULL_TIMELINE[5].model_copy(update={"reason": "approve (signal): ok\x00", "actor": "al\x00ice"}),
        *FULL_TIMELINE[6:],
    ]
    record = status(timeline).model_copy(update={"category": "cr\x00sh"})
    recorded = store.record(IncidentRecord(run_id="r1", status=record), T0)
    assert recorded.new_entries == len(FULL_TIMELINE)
    detail = store.detail(store.find("r1"))
    assert detail.incident.category == "cr\ufffdsh"
    assert detail.timeline[0].reason == "http reported: bad\ufffdbyte"
    assert (detail.decisions[0].operator, detail.decisions[0].reason) == ("al\ufffdice", "ok\ufffd")


@pytest.fixture
def local_time_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is UTC+9, so local and UTC times differ."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_tokyo")
def test_a_naive_time_is_utc_whatever_the_time_zones(database_url: str) -> None:
    """UTCDateTime takes a naive time as UTC. It passed it on as it was, and PostgreSQL reads a
    naive value in the session's time zone: on a server not set to UTC a naive start was stored
    hours off, and a naive `since` selected the wrong runs. The budget count took a naive
    `since` as the worker's local time."""
    if database_url.startswith("postgresql"):
        database_url += "?options=" + quote("-c timezone=America/New_York")
    ledger = ActionLedger(database_url)
    try:
        store = IncidentStore(ledger.engine)
        naive = status([e.model_copy(update={"at": e.at.replace(tzinfo=None)}) for e in FULL_TIMELINE])
        naive.started_at = T0.replace(tzinfo=None)
        store.record(IncidentRecord(run_id="r1", status=naive), T0)
        incident = store.find("r1")
        assert (incident.started_at, incident.ended_at) == (T0, T0 + timedelta(seconds=10))
        assert store.detail(incident).timeline[1].at == T0 + timedelta(seconds=1)
        after = (T0 + timedelta(minutes=1)).replace(tzinfo=None)
        assert store.recent(since=T0.replace(tzinfo=None)) != [] and store.recent(since=after) == []
        ledger.begin("w/r1/1", workflow_id="w", service="web", activity="restart_process")
        now = datetime.now(UTC)
        assert ledger.count_actions("web", ["restart_process"], (now - timedelta(hours=1)).replace(
            tzinfo=None)) == 1
        assert ledger.count_actions("web", ["restart_process"], (now + timedelta(hours=1)).replace(
            tzinfo=None)) == 0
    finally:
        ledger.engine.dispose()


def test_a_late_write_with_fewer_reports_does_not_lower_the_count(store: IncidentStore) -> None:
    """Reports past the timeline's cap (MAX_REPORTS_IN_TIMELINE) only raise `reports`, so two
    writes can carry the same timeline length. A write that lands late (an attempt that timed
    out while it waited for the database, committing after the next write) took the stored
    count back down, since only a shorter timeline was refused."""
    newer = status(FULL_TIMELINE).model_copy(update={"reports": 160})
    older = status(FULL_TIMELINE).model_copy(update={"reports": 150})
    store.record(IncidentRecord(run_id="r", status=newer), T0)
    store.record(IncidentRecord(run_id="r", status=older), T0 + timedelta(seconds=1))
    assert store.find("r").reports == 160
    store.record(IncidentRecord(run_id="r", status=older.model_copy(update={"reports": 170})), T0)
    assert store.find("r").reports == 170


def test_a_write_waiting_for_a_lock_another_session_holds_gives_up_at_its_deadline(
        ledger: ActionLedger) -> None:
    """Another session holds the ledger table locked (a migration, an operator's long
    transaction). On PostgreSQL a write used to wait for as long as the lock was held, outliving
    any activity attempt; like SQLite's busy timeout, it now gives up at its deadline with the
    retryable LedgerBusy, having written nothing."""
    ledger.begin("held", workflow_id="w", service="checkout", activity="restart_process")
    with ledger.engine.connect() as other:
        other.exec_driver_sql(
            "LOCK TABLE action_ledger IN ACCESS EXCLUSIVE MODE"
            if ledger.engine.dialect.name == "postgresql" else "DELETE FROM action_ledger")
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                ledger.progress("held", deadline=time.monotonic() + 0.5, step="stop")
                outcome.append(None)
            except BaseException as err:
                outcome.append(err)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(timeout=60)
        assert outcome, "the write still waits for the lock"
        assert isinstance(outcome[0], LedgerBusy)
        other.rollback()
    record = ledger.begin("held", workflow_id="w", service="checkout", activity="restart_process")
    assert record.progress_json == "{}"
