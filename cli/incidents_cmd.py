"""`medkit incidents`: past and running incidents from the incident store, without Temporal.

The store outlives Temporal's retention, so this is where budgets, reports and audits look:
every run with its outcome and duration, and one run's timeline, decisions and actions.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

from cli.common import (
    DEFAULT_STATE_DIR,
    LIST_LIMIT,
    CommandError,
    SubParsers,
    add_output_arg,
    emit,
    guarded,
    int_between,
    printable,
)
from models.base import parse_duration
from store.incidents import IncidentDetail, IncidentNotFound, IncidentRow, IncidentStore
from store.ledger import (
    ActionRecord,
    InvalidDatabaseURL,
    create_store_engine,
    parse_database_url,
    shown_database_url,
    sqlite_url,
)
from store.migrations import LATEST_VERSION, current_version

CONNECT_TIMEOUT_SECONDS = 10
"""How long the command waits for a PostgreSQL server before saying it is unreachable."""

SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def database_url(args: argparse.Namespace) -> URL:
    """--database-url, else $MEDKIT_DATABASE_URL, else the SQLite file in the state dir."""
    text = args.database_url or os.environ.get("MEDKIT_DATABASE_URL")
    if not text:
        return sqlite_url(Path(args.state_dir) / "medkit.db")
    try:
        url = parse_database_url(text)
    except InvalidDatabaseURL as err:
        raise CommandError(f"invalid database URL ({err})") from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise CommandError(f"unsupported database {url.get_backend_name()!r}: the incident store "
                           "runs on SQLite or PostgreSQL")
    return url


def open_store(args: argparse.Namespace) -> IncidentStore:
    """The store, or a one-line error: no database file, unreachable, or an unmigrated schema."""
    url = database_url(args)
    shown = shown_database_url(url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise CommandError(f"no incident database at {url.database} (a worker creates it: run "
                           "`medkit worker` or `medkit dev`, or pass --state-dir / --database-url)")
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_SECONDS)})
    try:
        engine: Engine = create_store_engine(url, read_only=True)
        with engine.connect() as conn:
            version = current_version(conn)
    except (NoSuchModuleError, ImportError) as err:
        raise CommandError(f"no database driver for {shown}: {err}") from None
    except SQLAlchemyError as err:
        raise CommandError(f"cannot reach database {shown}: {_first_line(err)}") from None
    if version != LATEST_VERSION:
        remedy = ("start a worker of this medkit version to migrate it" if version < LATEST_VERSION
                  else "upgrade medkit")
        raise CommandError(f"database {shown} has schema version {version}, this medkit reads "
                           f"version {LATEST_VERSION}: {remedy}")
    return IncidentStore(engine)


def _first_line(err: SQLAlchemyError) -> str:
    cause = getattr(err, "orig", None) or err
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def since_arg(value: str) -> timedelta:
    """Parse `--since 24h` / `30m` / `7d` into a time span."""
    try:
        span = parse_duration(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not isinstance(span, timedelta) or span <= timedelta(0):
        raise argparse.ArgumentTypeError(f"invalid time span {value!r}: use e.g. 30m, 24h or 7d")
    return span


def short_id(row: IncidentRow) -> str:
    """workflow-id/run-id-prefix: enough for `medkit incidents show`."""
    return f"{row.workflow_id}/{row.run_id[:8]}"


def human_duration(seconds: float) -> str:
    """`45s`, `12m30s`, `2h05m`, `3d04h`."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def duration_text(row: IncidentRow, now: datetime) -> str:
    """How long it took, or how long it has been open."""
    if row.duration_seconds is not None:
        return human_duration(row.duration_seconds)
    return f"{human_duration((now - row.started_at).total_seconds())} (open)"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, each as wide as its widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def format_list(rows: list[IncidentRow], now: datetime) -> str:
    """One line per incident, most recent first; every cell printable, so widths hold."""
    if not rows:
        return "no incidents match"
    header = ["STARTED (UTC)", "INCIDENT", "SERVICE", "SEVERITY", "OUTCOME", "DURATION", "ATTEMPTS",
              "ESCALATIONS"]
    return table(header, [[printable(cell) for cell in (
        f"{row.started_at:%Y-%m-%d %H:%M}", short_id(row), row.service, row.severity or "?",
        (row.outcome or f"open: {row.phase}") + (" (dry-run)" if row.dry_run else ""),
        duration_text(row, now), f"{row.attempts}/{row.max_attempts}", str(row.escalations),
    )] for row in rows])


def utc(moment: datetime) -> datetime:
    """A ledger timestamp in UTC (SQLite returns it naive, already UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _action_summary(action: ActionRecord) -> str:
    if action.result_json is None:
        progress: Any = json.loads(action.progress_json)
        failed = progress.get("failed") if isinstance(progress, dict) else None
        if isinstance(failed, dict):
            return f"FAILED (attempt {failed.get('attempt', '?')}): {failed.get('error', '')}"
        return f"in progress {action.progress_json}"
    result: Any = json.loads(action.result_json)
    if isinstance(result, dict) and "detail" in result:
        return f"{'ok' if result.get('ok', True) else 'FAILED'}: {result['detail']}"
    return action.result_json if len(action.result_json) <= 120 else action.result_json[:117] + "..."


def format_detail(detail: IncidentDetail, now: datetime) -> str:
    """The whole story of one run, for a postmortem; every recorded field printable on its line."""
    p = printable
    row = detail.incident
    ended = f", ended {row.ended_at:%Y-%m-%d %H:%M:%SZ}" if row.ended_at else ""
    lines = [
        f"{p(row.workflow_id)}/{p(row.run_id)}  {p(row.outcome or 'open: ' + row.phase)}"
        f"{'  (dry-run)' if row.dry_run else ''}",
        f"  service {p(row.service)}, key {p(row.incident_key)}, severity {p(row.severity or '?')}, "
        f"category {p(row.category or '?')}",
        f"  started {row.started_at:%Y-%m-%d %H:%M:%SZ}{ended}, duration {duration_text(row, now)}",
        f"  attempt {row.attempts}/{row.max_attempts}, {row.reports} report(s), "
        f"{row.escalations} escalation(s)",
        "  timeline:",
    ]
    for entry in detail.timeline:
        move = (f"{entry.from_phase} -> {entry.to_phase}" if entry.from_phase != entry.to_phase
                else f"[{entry.kind}]")
        lines.append(f"    {entry.at:%H:%M:%S} {p(move)}  {p(entry.reason)}  ({p(entry.actor)})")
    lines.append("  decisions:" if detail.decisions else "  decisions: none")
    lines.extend(f"    {d.at:%H:%M:%S} {p(d.operator)}: {p(d.decision)} ({p(d.via)}) {p(d.reason)}"
                 for d in detail.decisions)
    lines.append("  notifications:" if detail.notifications else "  notifications: none")
    lines.extend(f"    {n.at:%H:%M:%S} {p(n.route)}: {'sent' if n.delivered else 'FAILED'} "
                 f"{p(n.detail)}" for n in detail.notifications)
    lines.append("  actions (ledger):" if detail.actions else "  actions (ledger): none")
    lines.extend(f"    {utc(a.started_at):%H:%M:%S} {p(a.activity)}  {p(_action_summary(a))}"
                 for a in detail.actions)
    return "\n".join(lines)


def detail_json(detail: IncidentDetail) -> dict[str, Any]:
    """The run and everything recorded about it, as JSON-ready values."""
    def rows(items: list[Any]) -> list[dict[str, Any]]:
        return [item.model_dump(mode="json", exclude={"workflow_id", "run_id"}) for item in items]

    actions = [{
        **action.model_dump(mode="json", exclude={"progress_json", "result_json", "started_at",
                                                  "finished_at"}),
        "started_at": utc(action.started_at).isoformat(),
        "finished_at": utc(action.finished_at).isoformat() if action.finished_at else None,
        "progress": json.loads(action.progress_json),
        "result": json.loads(action.result_json) if action.result_json is not None else None,
    } for action in detail.actions]
    return {"incident": detail.incident.model_dump(mode="json"), "timeline": rows(detail.timeline),
            "decisions": rows(detail.decisions), "notifications": rows(detail.notifications),
            "actions": actions}


@guarded
def list_incidents(args: argparse.Namespace) -> int:
    """List incidents with outcome and duration, most recent first."""
    store = open_store(args)
    now = datetime.now(UTC)
    since = now - args.since if args.since is not None else None
    try:
        rows = store.recent(service=args.service, since=since, limit=args.limit)
    except SQLAlchemyError as err:
        raise CommandError(f"reading incidents failed: {_first_line(err)}") from None
    emit(args, [{"id": short_id(row), **row.model_dump(mode="json")} for row in rows],
         format_list(rows, now))
    return 0


@guarded
def show(args: argparse.Namespace) -> int:
    """Print one incident's whole timeline with its decisions, notifications and ledger actions."""
    store = open_store(args)
    try:
        detail = store.detail(store.find(args.id))
    except IncidentNotFound as err:
        raise CommandError(str(err)) from None
    except SQLAlchemyError as err:
        raise CommandError(f"reading incident {args.id!r} failed: {_first_line(err)}") from None
    emit(args, detail_json(detail), format_detail(detail, datetime.now(UTC)))
    return 0


def incident_id(text: str) -> str:
    """An `incidents show` ID: not empty, which would match no incident in a confusing way."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty id: pass a workflow id, a run id or "
                                         "workflow-id/run-id, as `medkit incidents` lists them")
    return text


def _add_database_args(parser: argparse.ArgumentParser, *, inherit: bool) -> None:
    """--database-url and --state-dir; on a subcommand (`inherit`) the parent's values stand unless
    given again, since argparse would otherwise reset them to the subcommand's defaults."""
    state_dir = Path(os.environ.get("MEDKIT_STATE_DIR", DEFAULT_STATE_DIR))
    parser.add_argument("--database-url", default=argparse.SUPPRESS if inherit else None,
                        help="SQLAlchemy URL of medkit's database, e.g. "
                        "postgresql+psycopg://medkit@db/medkit (default: $MEDKIT_DATABASE_URL, "
                        "else STATE_DIR/medkit.db)")
    parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS if inherit else state_dir,
                        help="the worker's state dir holding the default SQLite database "
                        "(default: $MEDKIT_STATE_DIR or .medkit)")


def register(subparsers: SubParsers) -> None:
    """Add `incidents` and `incidents show`."""
    parser = subparsers.add_parser(
        "incidents", help="list past and running incidents from the incident store",
        description="List incidents recorded by medkit's workers, most recent first, with their "
        "outcome and duration. Reads the database directly; Temporal need not be running.")
    parser.add_argument("--service", help="only incidents of this service")
    parser.add_argument("--since", type=since_arg, metavar="SPAN",
                        help="only incidents started within this span before now, e.g. 30m, 24h, 7d "
                        "(default: any time)")
    parser.add_argument("--limit", type=int_between(1, LIST_LIMIT), default=100,
                        help=f"at most this many, 1 to {LIST_LIMIT} (default 100)")
    _add_database_args(parser, inherit=False)
    add_output_arg(parser)
    parser.set_defaults(func=list_incidents)
    sub = parser.add_subparsers(dest="incidents_command", metavar="SUBCOMMAND")
    show_parser = sub.add_parser(
        "show", help="one incident's whole timeline, decisions, notifications and actions",
        description="Print one incident: its timeline, the operator decisions it accepted, the "
        "notifications it sent and the actions in the ledger. ID is a workflow id (its latest "
        "run), a run id, or workflow-id/run-id (a run-id prefix is enough), as listed.")
    show_parser.add_argument("id", metavar="ID", type=incident_id, help="e.g. recovery:web:health or "
                             "recovery:web:health/3f2a9c1e")
    _add_database_args(show_parser, inherit=True)
    show_parser.add_argument("-o", "--output", choices=["text", "json"], default=argparse.SUPPRESS,
                             help="output format (default: text)")
    show_parser.set_defaults(func=show)
