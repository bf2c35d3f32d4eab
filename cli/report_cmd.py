"""`medkit report`: reliability per service from the incident store, without Temporal.

MTTD, MTTR p50/p95, how incidents ended, and availability against the policy's optional `slo`
block, as a table, JSON or CSV. The figures are computed in store/report.py and defined in
docs/reporting.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cli.common import CommandError, SubParsers, guarded, load_policy, policy_path, printable
from cli.incidents_cmd import (
    _add_database_args,
    _first_line,
    human_duration,
    open_store,
    since_arg,
    table,
)
from store.report import Objective, ServiceReport, build_report, known_services, load_runs

DEFAULT_SINCE = timedelta(days=7)

REPORT_FIELDS = [field.name for field in fields(ServiceReport)]
"""The columns of `-o csv` and the keys of `-o json`, in order."""


def _objectives(args: argparse.Namespace) -> tuple[dict[str, Objective], set[str]]:
    """The `slo` of each service in the policy file, and the names of all its services.

    The policy is optional: without --config and $MEDKIT_CONFIG, and no file at the default
    path, there are no objectives. A file named by --config or $MEDKIT_CONFIG must exist and be
    valid: a report without the objectives its user named would look complete but be wrong."""
    path = policy_path(args)
    if args.config is None and not path.exists():
        if os.environ.get("MEDKIT_CONFIG"):
            raise CommandError(f"policy file {path} named by $MEDKIT_CONFIG not found (unset "
                               "MEDKIT_CONFIG to report without objectives, or pass --config FILE)",
                               "PolicyFileNotFound")
        return {}, set()
    policy = load_policy(path)
    objectives = {service.name: Objective(availability=service.slo.availability, window=service.slo.window)
                  for service in policy.services if service.slo is not None}
    return objectives, {service.name for service in policy.services}


def seconds_text(seconds: float | None) -> str:
    """`-` for no value, `0.25s` under a minute, then `12m30s`, `2h05m`, `3d04h`; signed."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    magnitude = abs(seconds)
    if magnitude < 60:
        return f"{sign}{magnitude:.3g}s"
    return sign + human_duration(magnitude)


def percent_text(value: float) -> str:
    """A percentage with up to four decimals and no trailing zeros: `99.9%`, `99.9653%`, `100%`."""
    return f"{value:.4f}".rstrip("0").rstrip(".") + "%"


def span_text(seconds: float) -> str:
    """A window length as it would be written in a policy: `30d`, `7d`, `12h`, or `90m`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return seconds_text(seconds)


def format_table(reports: list[ServiceReport], since: datetime, now: datetime) -> str:
    """A title line naming the window, then one row per service under a header."""
    title = (f"incidents started {since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC; availability "
             "over each service's slo window, else over the same span")
    if not reports:
        return f"{title}\nno services to report (no incidents in the store and no policy services)"
    header = ["SERVICE", "INCIDENTS", "RECOVERED", "RESOLVED", "DISMISSED", "ABORTED", "OPEN", "MTTD",
              "MTTR-P50", "MTTR-P95", "AVAILABILITY", "SLO", "BUDGET-LEFT"]
    rows = []
    for report in reports:
        window = span_text(report.availability_window_seconds)
        target = ("-" if report.slo_target_percent is None
                  else f"{percent_text(report.slo_target_percent)}/{window}")
        left = ("-" if report.error_budget_left_seconds is None or report.error_budget_left_percent is None
                else f"{seconds_text(report.error_budget_left_seconds)} "
                f"({report.error_budget_left_percent:.1f}%)")
        rows.append([printable(cell) for cell in (
            report.service, str(report.incidents), str(report.recovered), str(report.resolved),
            str(report.dismissed), str(report.aborted), str(report.open),
            seconds_text(report.mttd_seconds), seconds_text(report.mttr_p50_seconds),
            seconds_text(report.mttr_p95_seconds),
            f"{percent_text(report.availability_percent)}/{window}", target, left,
        )])
    return f"{title}\n{table(header, rows)}"


def report_record(report: ServiceReport) -> dict[str, Any]:
    """One service's figures as JSON-ready values: times in ISO 8601 UTC, durations in seconds."""
    record = asdict(report)
    record["since"] = report.since.isoformat()
    record["until"] = report.until.isoformat()
    return record


def write_csv(reports: list[ServiceReport]) -> None:
    """A header row, then one row per service; an absent figure is an empty cell."""
    writer = csv.DictWriter(sys.stdout, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for report in reports:
        record = report_record(report)
        writer.writerow({key: "" if value is None else printable(str(value))
                         for key, value in record.items()})


@guarded
def report(args: argparse.Namespace) -> int:
    """Compute and print the report for every service, or the one --service names."""
    now = datetime.now(UTC)
    since = now - args.since
    objectives, policy_services = _objectives(args)
    engine = open_store(args).engine  # checked as `medkit incidents` checks it
    try:
        if args.service is not None and args.service not in policy_services | known_services(engine):
            raise CommandError(f"unknown service {args.service!r}: no incident of it in the store and "
                               "not in the policy file")
        windows = [objective.window for name, objective in objectives.items()
                   if args.service in (None, name)]
        earliest = min([since, *(now - window for window in windows)])
        runs = load_runs(engine, earliest, args.service)
    except SQLAlchemyError as err:
        raise CommandError(f"reading incidents failed: {_first_line(err)}") from None
    finally:
        engine.dispose()
    services = {run.service for run in runs} | policy_services
    if args.service is not None:
        services = {args.service}
    reports = build_report(runs, services, since, now, objectives)
    if args.output == "json":
        print(json.dumps([report_record(item) for item in reports]))
    elif args.output == "csv":
        write_csv(reports)
    else:
        print(printable(format_table(reports, since, now), multiline=True))
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `report`."""
    parser = subparsers.add_parser(
        "report", help="MTTD, MTTR, outcomes and availability per service, from the incident store",
        description="Per service: incidents started in the span and how they ended, mean time to "
        "detect, MTTR p50/p95 of recovered runs, and availability against the policy's optional "
        "slo block. Reads the database directly; Temporal need not be running. The figures are "
        "defined in docs/reporting.md.")
    parser.add_argument("--service", help="only this service")
    parser.add_argument("--since", type=since_arg, default=DEFAULT_SINCE, metavar="SPAN",
                        help="incidents started within this span before now, e.g. 24h, 7d, 30d "
                        "(default: 7d); also the availability window of a service without an slo")
    parser.add_argument("--config", type=Path, help="policy file giving each service's slo and the "
                        "services to list (optional; default: $MEDKIT_CONFIG, which must exist, or "
                        ".medkit/policy.yaml if that file exists, else no objectives)")
    _add_database_args(parser, inherit=False)
    parser.add_argument("-o", "--output", choices=["text", "json", "csv"], default="text",
                        help="output format (default: text, a table)")
    parser.set_defaults(func=report)
