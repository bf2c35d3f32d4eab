"""`medkit incidents` and `medkit incidents show`, on SQLite files and a real PostgreSQL."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from activities.deps import ActivityDeps
from cli.incidents_cmd import open_store
from cli.main import build_parser, run
from models.incident_record import IncidentRecord
from store.incidents import IncidentStore
from store.ledger import ActionLedger, create_store_engine
from store.migrations import migrate
from tests.conftest import free_port
from tests.test_store import FULL_TIMELINE, T0, status

pytest_plugins = ["tests.postgres_fixture"]

WEB = "recovery:web:health"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `medkit ARGV` in-process: exit code, stdout, stderr."""
    try:
        code = run(list(argv))
    except SystemExit as usage:  # argparse rejects the arguments before any command runs
        code = int(usage.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def populate(url: str) -> None:
    """Two finished web incidents (one a day ago, one just now), a running api incident, an action."""
    ledger = ActionLedger(url)
    store = IncidentStore(ledger.engine)
    old = status(FULL_TIMELINE, workflow_id=WEB)
    store.record(IncidentRecord(run_id="11111111-aaaa", status=old), old.started_at)
    start = datetime.now(UTC) - timedelta(minutes=5)
    recent = status([e.model_copy(update={"at": e.at - T0 + start}) for e in FULL_TIMELINE],
                    workflow_id=WEB)
    recent.started_at = start
    store.record(IncidentRecord(run_id="22222222-bbbb", status=recent), recent.started_at)
    running = status(FULL_TIMELINE[:3], workflow_id="recovery:api:health", service="api")
    running.dry_run = True
    store.record(IncidentRecord(run_id="33333333-cccc", status=running), running.started_at)
    action = ledger.begin(f"{WEB}/11111111-aaaa/7", workflow_id=WEB, service="web",
                          activity="restart_process")
    ledger.finish(action.key, json.dumps({"ok": True, "detail": "restarted pid 1 -> 2"}))
    ledger.engine.dispose()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A worker's state dir with a populated default SQLite database."""
    populate(f"sqlite:///{tmp_path / 'medkit.db'}")
    return tmp_path


@pytest.mark.parametrize("name", ["state?dir", "state#dir", "state%20dir"])
async def test_a_state_dir_named_with_url_characters_holds_its_database(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    """The worker and the command both use <state dir>/medkit.db, whatever the dir's name: `?`
    would start a URL's query (`state?dir` read as `state`), `%20` would be decoded."""
    state = tmp_path / name
    deps = ActivityDeps.create(state)
    try:
        recovery = status(FULL_TIMELINE, workflow_id=WEB)
        IncidentStore(deps.ledger.engine).record(IncidentRecord(run_id="11111111-aaaa", status=recovery),
                                                 recovery.started_at)
        deps.ledger.engine.dispose()
    finally:
        await deps.http.aclose()
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]
    assert (state / "medkit.db").is_file()
    code, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state), "-o", "json")
    assert code == 0 and [row["run_id"] for row in json.loads(out)] == ["11111111-aaaa"]


def test_list_shows_outcome_and_duration(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state_dir))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "(UTC)", "INCIDENT"]
    assert len(lines) == 4
    assert f"{WEB}/22222222" in lines[1] and "Recovered" in lines[1] and " 10s " in lines[1]
    assert f"{WEB}/11111111" in lines[3]
    api = next(line for line in lines if "recovery:api:health" in line)
    assert "open: Assessing (dry-run)" in api and "(open)" in api


def test_list_filters_by_service_and_since(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    _, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state_dir), "--service", "web",
                        "-o", "json")
    rows = json.loads(out)
    assert [row["run_id"] for row in rows] == ["22222222-bbbb", "11111111-aaaa"]
    assert rows[0]["outcome"] == "Recovered" and rows[0]["duration_seconds"] == 10.0
    assert rows[0]["id"] == f"{WEB}/22222222"
    _, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state_dir), "--since", "1h", "-o", "json")
    assert [row["run_id"] for row in json.loads(out)] == ["22222222-bbbb"]
    _, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state_dir), "--service", "nope")
    assert out.strip() == "no incidents match"


def test_show_prints_timeline_decisions_notifications_and_actions(
        capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "incidents", "show", f"{WEB}/1111", "--state-dir", str(state_dir))
    assert code == 0
    assert out.startswith(f"{WEB}/11111111-aaaa  Recovered")
    assert "duration 10s" in out
    for entry in FULL_TIMELINE:
        assert entry.reason in out
    assert "Assessing -> Recovered  healthy  (medkit)" in out
    assert "alice: approve (signal) restart is safe" in out
    assert "slack: FAILED route 'slack' answered HTTP 404" in out
    assert "restart_process  ok: restarted pid 1 -> 2" in out


def test_show_json_and_parent_flags(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, out, _ = run_cli(capsys, "incidents", "--state-dir", str(state_dir), "-o", "json",
                           "show", "11111111-aaaa")
    assert code == 0
    detail = json.loads(out)
    assert detail["incident"]["workflow_id"] == WEB
    assert [d["operator"] for d in detail["decisions"]] == ["alice", "bob"]
    assert len(detail["timeline"]) == len(FULL_TIMELINE)
    assert detail["actions"][0]["result"]["detail"] == "restarted pid 1 -> 2"


def test_show_of_a_workflow_id_is_its_latest_run(capsys: pytest.CaptureFixture[str],
                                                 state_dir: Path) -> None:
    _, out, _ = run_cli(capsys, "incidents", "show", WEB, "--state-dir", str(state_dir))
    assert out.startswith(f"{WEB}/22222222-bbbb")
    assert "actions (ledger): none" in out


@pytest.mark.parametrize(("ident", "message"), [
    ("nope", "medkit: no incident 'nope'"),
    (f"{WEB}/", "matches 2 runs"),
])
def test_unknown_or_ambiguous_id_is_one_line(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                             ident: str, message: str) -> None:
    code, out, err = run_cli(capsys, "incidents", "show", ident, "--state-dir", str(state_dir))
    assert (code, out) == (1, "")
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_database_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "incidents", "--state-dir", str(tmp_path / "none"))
    assert code == 1
    assert err.startswith(f"medkit: no incident database at {tmp_path / 'none' / 'medkit.db'}")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("userinfo", "query"), [("medkit:s3cret", ""), ("medkit", "?password=s3cret")])
def test_unreachable_database_is_one_line(capsys: pytest.CaptureFixture[str], userinfo: str,
                                          query: str) -> None:
    """The password is hidden however the URL gives it (libpq also reads `?password=`)."""
    url = f"postgresql+psycopg://{userinfo}@127.0.0.1:{free_port()}/medkit{query}"
    code, _, err = run_cli(capsys, "incidents", "--database-url", url)
    assert code == 1
    shown = "medkit:***" if query == "" else "medkit"
    assert err.startswith(f"medkit: cannot reach database postgresql+psycopg://{shown}@127.0.0.1:")
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1


def test_an_unmigrated_database_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'medkit.db'}")
    migrate(engine, target=1)
    engine.dispose()
    code, _, err = run_cli(capsys, "incidents", "--state-dir", str(tmp_path))
    assert code == 1 and "schema version 1" in err and "start a worker" in err


def test_invalid_since_is_a_usage_error(capsys: pytest.CaptureFixture[str], state_dir: Path) -> None:
    code, _, err = run_cli(capsys, "incidents", "--state-dir", str(state_dir), "--since", "soon")
    assert code == 2 and "--since" in err


def test_postgres_from_the_environment(capsys: pytest.CaptureFixture[str], postgres_url: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    populate(postgres_url)
    monkeypatch.setenv("MEDKIT_DATABASE_URL", postgres_url)
    code, out, _ = run_cli(capsys, "incidents", "--service", "web", "-o", "json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = run_cli(capsys, "incidents", "show", "33333333")
    assert code == 0 and out.startswith("recovery:api:health/33333333-cccc  open: Assessing  (dry-run)")


def test_every_flag_has_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    incidents = commands.choices["incidents"]
    show = next(a for a in incidents._actions if isinstance(a, argparse._SubParsersAction)).choices["show"]
    for command in (incidents, show):
        for action in command._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, (command.prog, action.dest)


def test_recorded_text_is_shown_without_terminal_controls(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A run recorded with escape sequences in its service, summary, operator and reason: the
    text output keeps their words, each field on its own line, and the JSON has them exactly."""
    engine = create_store_engine(f"sqlite:///{tmp_path / 'medkit.db'}")
    migrate(engine)
    evil = [
        FULL_TIMELINE[0].model_copy(update={"reason": "cli reported: \x1b[2J\x1b[31mfake\nforged"}),
        *FULL_TIMELINE[1:5],
        FULL_TIMELINE[5].model_copy(update={"reason": "approve (signal): \x1b]0;pwned\x07ok\x9b2J",
                                            "actor": "\x1b[5meve\u202e"}),
        *FULL_TIMELINE[6:],
    ]
    record = status(evil, workflow_id="recovery:evil\x1b[31m:health", service="evil\x1b[2J")
    IncidentStore(engine).record(IncidentRecord(run_id="44444444-dddd", status=record), T0)
    engine.dispose()
    control = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

    code, listed, _ = run_cli(capsys, "incidents", "--state-dir", str(tmp_path))
    assert code == 0 and not control.findall(listed), repr(listed)
    assert len(listed.splitlines()) == 2 and "recovery:evil:health/44444444" in listed
    code, shown, _ = run_cli(capsys, "incidents", "show", "44444444", "--state-dir", str(tmp_path))
    assert code == 0 and not control.findall(shown), repr(shown)
    assert shown.startswith("recovery:evil:health/44444444-dddd  Recovered")
    assert "service evil," in shown and "cli reported: fake forged  (cli)" in shown
    assert "eve: approve (signal) ok" in shown
    lines = shown.splitlines()
    timeline = lines[lines.index("  timeline:") + 1:lines.index("  decisions:")]
    assert len(timeline) == len(evil)  # no field's line break forged a timeline line
    code, exact, _ = run_cli(capsys, "incidents", "show", "44444444", "--state-dir", str(tmp_path),
                             "-o", "json")
    detail = json.loads(exact)
    assert detail["incident"]["service"] == "evil\x1b[2J"
    assert detail["timeline"][0]["reason"] == "cli reported: \x1b[2J\x1b[31mfake\nforged"
    assert detail["decisions"][0]["operator"] == "\x1b[5meve\u202e"


@pytest.mark.parametrize("command", [["incidents"], ["incidents", "show", "x"], ["report"]])
@pytest.mark.parametrize("url", [
    "postgresql+psycopg://medkit@127.0.0.1:pg-secret-pw/medkit",  # the password where the port goes
    "postgresql+psycopg://medkit:pg-secret-pw@[::1/medkit",
])
def test_a_url_sqlalchemy_cannot_parse_is_one_line_without_its_pieces(
        capsys: pytest.CaptureFixture[str], command: list[str], url: str) -> None:
    """SQLAlchemy refuses such a URL with a ValueError quoting the port it read, which can be a
    password: it ended in a traceback showing that piece."""
    code, out, err = run_cli(capsys, *command, "--database-url", url)
    assert (code, out) == (1, "")
    assert err.startswith("medkit: invalid database URL") and len(err.strip().splitlines()) == 1
    assert "pg-secret-pw" not in err


def test_reading_the_store_never_blocks_a_worker_writing_it(state_dir: Path) -> None:
    """The commands (and the dashboard) read through open_store. Their engine began every
    transaction, reads too, with BEGIN IMMEDIATE, SQLite's write lock: a long `medkit report`
    over a big store made every worker's ledger and store write wait for it (then fail after the
    busy timeout), though WAL lets readers and a writer run together. The writer here does not
    wait at all (timeout 0): it succeeds only if the open read transaction holds no write lock."""
    args = argparse.Namespace(database_url=None, state_dir=state_dir)
    store = open_store(args)
    try:
        with store.engine.connect() as reading:
            assert reading.exec_driver_sql("SELECT count(*) FROM incidents").scalar() == 3
            writer = sqlite3.connect(state_dir / "medkit.db", timeout=0, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("UPDATE incidents SET escalations = 7 WHERE run_id = '33333333-cccc'")
                writer.execute("COMMIT")
            finally:
                writer.close()
            assert reading.exec_driver_sql("SELECT max(escalations) FROM incidents").scalar() == 0
        assert store.find("33333333").escalations == 7
    finally:
        store.engine.dispose()


def test_the_commands_never_write_the_database(database_url: str) -> None:
    """A reading engine refuses writes, on both backends, so no command changes the store."""
    populate(database_url)
    store = open_store(argparse.Namespace(database_url=database_url, state_dir=None))
    try:
        with pytest.raises(DBAPIError, match=r"(?i)read-?only"), store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM incidents")
    finally:
        store.engine.dispose()
    engine = create_store_engine(database_url)
    try:
        assert len(IncidentStore(engine).recent()) == 3
    finally:
        engine.dispose()
