"""`medkit report` and store/report.py: every figure, on incidents of known timings recorded
through the incident store's own API in real SQLite files (and once in a real PostgreSQL)."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from cli.common import load_policy
from cli.main import build_parser
from cli.report_cmd import REPORT_FIELDS
from models.incident_record import IncidentRecord
from models.phases import Outcome, Phase
from models.policy_yaml import PolicyError, parse_policy
from models.status import RecoveryStatus, TimelineEntry
from store.incidents import IncidentStore
from store.ledger import ActionLedger
from store.report import Objective, RunTimes, build_report, downtime_seconds, load_runs, percentile
from tests.conftest import WebhookReceiver
from tests.scripted import Script, detection, scripted_policy, start
from tests.test_incidents_cli import run_cli

pytest_plugins = ["tests.postgres_fixture"]

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WEEK = 7 * DAY
WEB_SLO = Objective(availability=99.9, window=30 * DAY)

RUNG = "{name: w, steps: [{wait: 1s}]}"
SERVICE = ("{name: %s, probes: [{kind: tcp, name: p, port: 1}], "
           f"ladders: {{minor: [{RUNG}], major: [{RUNG}], critical: [{RUNG}]}}%s}}")


def policy_text(*services: tuple[str, str]) -> str:
    """A policy file of services given as (name, extra flow-mapping fields)."""
    return "version: 1\nservices:\n" + "".join(f"  - {SERVICE % (name, extra)}\n"
                                                for name, extra in services)


POLICY = policy_text(("web", ", slo: {availability: 99.9, window: 30d}"),
                     ("db", ", slo: {availability: 99.99, window: 7d}"), ("api", ""))


def run_status(service: str, key: str, start: datetime, *, detect: float, duration: float | None,
               outcome: Outcome | None, dry_run: bool = False, assessed: bool = True) -> RecoveryStatus:
    """A run reported at `start`, assessing `detect` seconds later, ending with `outcome`
    `duration` seconds after `start` (still assessing when `outcome` is None)."""
    def entry(seconds: float, frm: Phase, to: Phase, reason: str, kind: str = "transition") -> TimelineEntry:
        return TimelineEntry.model_validate({"at": start + timedelta(seconds=seconds), "from": frm,
                                             "to": to, "reason": reason, "actor": "medkit", "kind": kind})

    timeline = [entry(0, Phase.DETECTED, Phase.DETECTED, "cli reported: down", "report")]
    if assessed:
        timeline.append(entry(detect, Phase.DETECTED, Phase.ASSESSING, "assessing"))
    phase = Phase.ASSESSING
    if outcome is not None:
        assert duration is not None
        phase = Phase(outcome.value)
        timeline.append(entry(duration, Phase.ASSESSING, phase, f"ended {outcome.value}"))
    return RecoveryStatus(workflow_id=f"recovery:{service}:{key}", service=service, incident_key=key,
                          phase=phase, max_attempts=3, outcome=outcome, dry_run=dry_run,
                          started_at=start, timeline=timeline)


def populate(url: str, now: datetime, *, straddling: bool = True) -> None:
    """web: seven runs in the last week of every outcome (one dry-run, two overlapping), one
    10 days ago, and (if `straddling`) one across the start of its 30-day window; api: one
    recovered two days ago and one open for an hour. Timings are in docs of each figure below."""
    runs = [
        run_status("web", "a", now - DAY, detect=2, duration=60, outcome=Outcome.RECOVERED),
        run_status("web", "b", now - 2 * DAY, detect=0, duration=120, outcome=Outcome.RECOVERED),
        run_status("web", "c", now - 3 * DAY, detect=4, duration=600, outcome=Outcome.RECOVERED),
        run_status("web", "d", now - 4 * DAY, detect=1, duration=1800, outcome=Outcome.RESOLVED),
        run_status("web", "e", now - 5 * DAY, detect=1, duration=30, outcome=Outcome.DISMISSED),
        run_status("web", "f", now - DAY + timedelta(seconds=30), detect=1, duration=90,
                   outcome=Outcome.ABORTED),
        run_status("web", "i", now - 6 * DAY, detect=3, duration=30, outcome=Outcome.RECOVERED,
                   dry_run=True),
        run_status("web", "g", now - 10 * DAY, detect=1, duration=900, outcome=Outcome.RECOVERED),
        run_status("api", "k", now - 2 * DAY, detect=1, duration=45, outcome=Outcome.RECOVERED),
        run_status("api", "j", now - timedelta(hours=1), detect=5, duration=None, outcome=None),
    ]
    if straddling:
        runs.append(run_status("web", "h", now - 30 * DAY - timedelta(seconds=100), detect=1,
                               duration=300, outcome=Outcome.RECOVERED, assessed=False))
    ledger = ActionLedger(url)
    store = IncidentStore(ledger.engine)
    for number, status in enumerate(runs):
        store.record(IncidentRecord(run_id=f"run-{number}", status=status), now)
    ledger.engine.dispose()


WEB_DOWNTIME = 120 + 120 + 600 + 1800 + 30 + 900
"""a and f overlap ([0, 60] and [30, 120] s after a's start): 120 s together; b, c, d, the
dry-run i and g (10 days ago) count whole; the dismissed e not at all."""


def check_web(figures: Mapping[str, object], *, straddling: bool) -> None:
    """The web figures every path (computation, JSON, CSV) must give exactly."""
    assert {key: figures[key] for key in ("incidents", "recovered", "resolved", "dismissed", "aborted",
                                          "open", "dry_run")} == {
        "incidents": 7, "recovered": 4, "resolved": 1, "dismissed": 1, "aborted": 1, "open": 0,
        "dry_run": 1}
    assert figures["mttd_seconds"] == pytest.approx((2 + 0 + 4 + 1 + 1 + 1 + 3) / 7, rel=1e-12)
    assert (figures["mttr_p50_seconds"], figures["mttr_p95_seconds"]) == (60, 600)
    down = WEB_DOWNTIME + (200 if straddling else 0)
    window = 30 * 86400
    budget = 0.1 / 100 * window
    assert figures["downtime_seconds"] == down
    assert figures["availability_window_seconds"] == window
    assert figures["availability_percent"] == pytest.approx((1 - down / window) * 100, rel=1e-12)
    assert figures["slo_target_percent"] == 99.9
    assert figures["error_budget_seconds"] == pytest.approx(budget, rel=1e-12)
    assert figures["error_budget_left_seconds"] == pytest.approx(budget - down, rel=1e-12)
    assert figures["error_budget_left_percent"] == pytest.approx((budget - down) / budget * 100, rel=1e-12)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A worker's state dir whose database holds the runs of `populate`, timed from now."""
    populate(f"sqlite:///{tmp_path / 'medkit.db'}", datetime.now(UTC), straddling=False)
    return tmp_path


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    """A policy with an slo for web (99.9% over 30d) and db (99.99% over 7d), none for api."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


# ----- the computation, at a fixed now -----------------------------------------------------------


def test_every_figure_from_a_real_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'medkit.db'}"
    populate(url, NOW)
    ledger = ActionLedger(url)
    runs = load_runs(ledger.engine, NOW - 30 * DAY)
    ledger.engine.dispose()
    by_key = {(run.service, run.started_at): run for run in runs}
    assert len(runs) == 11
    straddler = by_key[("web", NOW - 30 * DAY - timedelta(seconds=100))]
    assert straddler.reported_at == straddler.started_at and straddler.assessing_at is None

    reports = build_report(runs, ["web", "api", "db"], NOW - WEEK, NOW,
                           {"web": WEB_SLO, "db": Objective(99.99, WEEK)})
    assert [r.service for r in reports] == ["api", "db", "web"]
    api, db, web = reports
    check_web(vars(web), straddling=True)
    assert (web.since, web.until) == (NOW - WEEK, NOW)

    assert (api.incidents, api.recovered, api.open) == (2, 1, 1)
    assert api.mttd_seconds == 3 and (api.mttr_p50_seconds, api.mttr_p95_seconds) == (45, 45)
    assert api.availability_window_seconds == WEEK.total_seconds()
    assert api.downtime_seconds == 3600 + 45  # the open run counts until now
    assert api.availability_percent == pytest.approx((1 - 3645 / WEEK.total_seconds()) * 100, rel=1e-12)
    assert (api.slo_target_percent, api.error_budget_seconds, api.error_budget_left_seconds,
            api.error_budget_left_percent) == (None, None, None, None)

    assert (db.incidents, db.downtime_seconds, db.availability_percent) == (0, 0, 100)
    assert (db.mttd_seconds, db.mttr_p50_seconds, db.mttr_p95_seconds) == (None, None, None)
    assert db.error_budget_seconds == pytest.approx(0.01 / 100 * WEEK.total_seconds(), rel=1e-12)
    assert db.error_budget_left_seconds == db.error_budget_seconds
    assert db.error_budget_left_percent == 100


def test_load_runs_skips_runs_that_ended_before_the_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'medkit.db'}"
    populate(url, NOW)
    ledger = ActionLedger(url)
    week = load_runs(ledger.engine, NOW - WEEK)
    web_only = load_runs(ledger.engine, NOW - 30 * DAY, "web")
    ledger.engine.dispose()
    assert len(week) == 9  # not g (10 days ago) nor the straddler
    assert {run.service for run in web_only} == {"web"} and len(web_only) == 9


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7
    values = [float(n) for n in range(20, 0, -1)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (10, 19, 20)
    assert percentile([30, 60, 120, 600], 50) == 60


def test_downtime_is_the_union_of_incidents_clipped_to_the_window() -> None:
    def run(start: float, end: float | None, outcome: Outcome | None = Outcome.RECOVERED) -> RunTimes:
        return RunTimes(service="web", outcome=outcome.value if outcome else None, dry_run=False,
                        started_at=NOW + timedelta(seconds=start),
                        ended_at=None if end is None else NOW + timedelta(seconds=end))

    start, end = NOW, NOW + timedelta(seconds=1000)
    nested = [run(100, 400), run(150, 200), run(300, 500)]
    assert downtime_seconds(nested, start, end) == 400
    assert downtime_seconds([run(-50, 30), run(990, None, None)], start, end) == 30 + 10
    assert downtime_seconds([run(-500, -10), run(1001, 1100), run(10, 20, Outcome.DISMISSED)],
                            start, end) == 0


# ----- the slo block of the policy -----------------------------------------------------------------


def test_slo_is_optional_and_parses_with_a_default_window() -> None:
    services = {s.name: s for s in parse_policy(POLICY).services}
    assert services["api"].slo is None
    web, db = services["web"].slo, services["db"].slo
    assert web is not None and (web.availability, web.window) == (99.9, 30 * DAY)
    assert db is not None and (db.availability, db.window) == (99.99, WEEK)
    default = parse_policy(policy_text(("web", ", slo: {availability: 99.5}"))).services[0].slo
    assert default is not None and default.window == 30 * DAY


@pytest.mark.parametrize(("slo", "path", "message"), [
    ("{availability: 100}", "services[0].slo.availability", "less than 100"),
    ("{availability: 0}", "services[0].slo.availability", "greater than 0"),
    ("{window: 30d}", "services[0].slo.availability", "Field required"),
    ("{availability: 99.9, window: 0s}", "services[0].slo", "slo.window must be greater than zero"),
    ("{availability: 99.9, window: soon}", "services[0].slo.window", "invalid duration"),
    ("{availability: 99.9, windw: 30d}", "services[0].slo.windw", "Extra inputs"),
])
def test_a_bad_slo_is_refused_naming_its_field(slo: str, path: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy_text(("web", f", slo: {slo}")), "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == path and message in problem.message


# ----- the command ---------------------------------------------------------------------------------


def test_json_has_every_figure(capsys: pytest.CaptureFixture[str], state_dir: Path,
                               policy_path: Path) -> None:
    code, out, err = run_cli(capsys, "report", "--state-dir", str(state_dir), "--config",
                             str(policy_path), "-o", "json")
    assert (code, err) == (0, "")
    reports = {item["service"]: item for item in json.loads(out)}
    assert sorted(reports) == ["api", "db", "web"]
    assert list(reports["web"]) == REPORT_FIELDS
    check_web(reports["web"], straddling=False)
    assert (reports["api"]["incidents"], reports["api"]["open"], reports["api"]["mttd_seconds"]) == (2, 1, 3)
    since, until = (datetime.fromisoformat(reports["web"][key]) for key in ("since", "until"))
    assert until - since == WEEK


def test_csv_has_the_same_figures(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                  policy_path: Path) -> None:
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "--config",
                           str(policy_path), "-o", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0].split(",") == REPORT_FIELDS
    web = next(row for row in rows if row["service"] == "web")
    numbers = {key: float(value) for key, value in web.items()
               if key not in ("service", "since", "until") and value != ""}
    check_web(numbers, straddling=False)
    api = next(row for row in rows if row["service"] == "api")
    assert api["slo_target_percent"] == "" and api["error_budget_left_seconds"] == ""


def test_table_has_a_header_and_a_row_per_service(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                                  policy_path: Path) -> None:
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "--config", str(policy_path))
    assert code == 0
    title, header, *rows = out.splitlines()
    assert title.startswith("incidents started ") and title.count("UTC") == 1
    assert header.split() == ["SERVICE", "INCIDENTS", "RECOVERED", "RESOLVED", "DISMISSED", "ABORTED",
                              "OPEN", "MTTD", "MTTR-P50", "MTTR-P95", "AVAILABILITY", "SLO",
                              "BUDGET-LEFT"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert sorted(cells) == ["api", "db", "web"]
    down = WEB_DOWNTIME
    budget = 0.1 / 100 * 30 * 86400
    availability = f"{(1 - down / (30 * 86400)) * 100:.4f}".rstrip("0").rstrip(".")
    assert cells["web"][:11] == ["web", "7", "4", "1", "1", "1", "0", "1.71s", "1m00s", "10m00s",
                                 f"{availability}%/30d"]
    assert cells["web"][11:] == ["99.9%/30d", "-16m18s", f"({(budget - down) / budget * 100:.1f}%)"]
    assert cells["db"][1:] == ["0", "0", "0", "0", "0", "0", "-", "-", "-", "100%/7d", "99.99%/7d",
                               "1m00s", "(100.0%)"]
    assert cells["api"][-2:] == ["-", "-"]


def test_service_filter_and_no_policy(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config and no policy at the default path there are no objectives: web's
    availability is over the --since span, and the services are those of the store."""
    monkeypatch.chdir(state_dir)
    monkeypatch.delenv("MEDKIT_CONFIG", raising=False)
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "-o", "json")
    assert code == 0 and [item["service"] for item in json.loads(out)] == ["api", "web"]
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "--service", "web",
                           "--since", "30d", "-o", "json")
    [web] = json.loads(out)
    assert code == 0 and web["service"] == "web" and web["slo_target_percent"] is None
    assert web["incidents"] == 8 and web["downtime_seconds"] == WEB_DOWNTIME
    assert web["availability_window_seconds"] == 30 * 86400


def test_the_policy_from_the_environment(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                        policy_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDKIT_CONFIG", str(policy_path))
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "--service", "web", "-o", "json")
    assert code == 0
    check_web(json.loads(out)[0], straddling=False)


def test_a_missing_policy_file_named_by_the_environment_is_one_line(
        capsys: pytest.CaptureFixture[str], state_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$MEDKIT_CONFIG naming no file fails as --config does, naming the variable and the path,
    instead of reporting without the objectives it was meant to supply."""
    missing = tmp_path / "gone" / "policy.yaml"
    monkeypatch.chdir(state_dir)
    monkeypatch.setenv("MEDKIT_CONFIG", str(missing))
    code, out, err = run_cli(capsys, "report", "--state-dir", str(state_dir))
    assert (code, out) == (1, "")
    assert err.startswith(f"medkit: policy file {missing} named by $MEDKIT_CONFIG not found")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "report", "--state-dir", str(state_dir), "-o", "json")
    assert code == 1 and json.loads(err)["type"] == "PolicyFileNotFound"


def test_a_policy_service_without_incidents_can_be_asked_for(
        capsys: pytest.CaptureFixture[str], state_dir: Path, policy_path: Path) -> None:
    code, out, _ = run_cli(capsys, "report", "--state-dir", str(state_dir), "--config", str(policy_path),
                           "--service", "db", "-o", "json")
    [db] = json.loads(out)
    assert code == 0 and (db["service"], db["incidents"], db["availability_percent"]) == ("db", 0, 100)


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--service", "nope"], 1, "medkit: unknown service 'nope'"),
    (["--since", "soon"], 2, "--since"),
    (["--since", "0s"], 2, "--since"),
    (["--config", "missing.yaml"], 1, "medkit: policy file missing.yaml not found"),
    (["-o", "xml"], 2, "invalid choice"),
])
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], state_dir: Path, argv: list[str],
                             code: int, message: str) -> None:
    got, out, err = run_cli(capsys, "report", "--state-dir", str(state_dir), *argv)
    assert (got, out) == (code, "")
    assert message in err
    if code == 1:
        assert len(err.strip().splitlines()) == 1


def test_a_missing_database_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "report", "--state-dir", str(tmp_path / "none"))
    assert (code, out) == (1, "")
    assert err.startswith(f"medkit: no incident database at {tmp_path / 'none' / 'medkit.db'}")
    assert len(err.strip().splitlines()) == 1


def test_a_bad_slo_in_the_policy_is_a_policy_error(capsys: pytest.CaptureFixture[str], state_dir: Path,
                                                   tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text(("web", ", slo: {availability: 120}")))
    with pytest.raises(PolicyError):
        load_policy(bad)
    code, out, err = run_cli(capsys, "report", "--state-dir", str(state_dir), "--config", str(bad))
    assert (code, out) == (2, "") and "services[0].slo.availability" in err


def test_postgres(capsys: pytest.CaptureFixture[str], postgres_url: str, policy_path: Path) -> None:
    populate(postgres_url, datetime.now(UTC), straddling=False)
    code, out, _ = run_cli(capsys, "report", "--database-url", postgres_url, "--config", str(policy_path),
                           "--service", "web", "-o", "json")
    assert code == 0
    check_web(json.loads(out)[0], straddling=False)


def test_every_flag_has_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in commands.choices["report"]._actions:
        assert action.help, action.dest


async def test_end_to_end_from_real_recoveries(
        capsys: pytest.CaptureFixture[str], dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
        tmp_path: Path, webhook_receiver: WebhookReceiver) -> None:
    """Two real recoveries on the dev server, recorded by the worker's own record_incident: one
    recovers after a restart, one is dismissed. The report counts them, takes MTTR and downtime
    from the recovered run's stored duration, and MTTD from each detection's own detected_at
    (42 s before the recovery started) to the move into Assessing."""
    policy = scripted_policy(webhook_receiver.url, validation={"samples": 1, "interval": "1s"},
                             assessment={"dismiss_when_healthy": True},
                             slo={"availability": 99.0, "window": "1d"})
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(json.dumps({"services": [policy.model_dump(mode="json")]}))
    script = Script()
    script.probe("http", False)  # the first assessment fails one probe: a minor incident
    async with script.worker(dev_env.client, queue, deps):
        seen = datetime.now(UTC) - timedelta(seconds=42)
        recovered = await (await start(dev_env.client, queue, policy,
                                       detection().model_copy(update={"detected_at": seen}))).result()
        dismissed = await (await start(dev_env.client, queue, policy,
                                       detection().model_copy(update={"detected_at": seen}))).result()
    assert (recovered.phase, dismissed.phase) == (Phase.RECOVERED, Phase.DISMISSED)
    duration = (recovered.timeline[-1].at - recovered.started_at).total_seconds()

    code, out, _ = run_cli(capsys, "report", "--state-dir", str(tmp_path), "--config", str(policy_path),
                           "--service", "checkout", "-o", "json")
    assert code == 0
    [report] = json.loads(out)
    assert {key: report[key] for key in ("incidents", "recovered", "dismissed", "open")} == {
        "incidents": 2, "recovered": 1, "dismissed": 1, "open": 0}
    assessing = [next(e.at for e in run.timeline if e.to_phase == Phase.ASSESSING)
                 for run in (recovered, dismissed)]
    assert [run.timeline[0].at for run in (recovered, dismissed)] == [seen, seen]
    assert report["mttd_seconds"] == pytest.approx(
        sum((at - seen).total_seconds() for at in assessing) / 2, rel=1e-9)
    assert report["mttd_seconds"] >= 42
    assert report["mttr_p50_seconds"] == report["mttr_p95_seconds"] == duration
    assert report["downtime_seconds"] == duration
    assert report["error_budget_left_seconds"] == pytest.approx(864 - duration, rel=1e-12)
