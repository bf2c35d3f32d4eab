"""`medkit config check FILE`: validate a policy file and report every problem with its line."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import SubParsers, guarded, load_policy, printable
from models.phases import Severity


@guarded
def check(args: argparse.Namespace) -> int:
    """Validate the file; print a summary when it is good."""
    policy = load_policy(Path(args.file), hint=False)
    for service in policy.services:
        ladders = ", ".join(
            f"{severity.value} {len(service.ladders.for_severity(severity))} rung(s)"
            for severity in Severity
        )
        print(f"{printable(service.name)}: {len(service.probes)} probe(s), {len(service.actions)} action(s), "
              f"{ladders}{', dry-run' if service.dry_run else ''}")
    print(f"{printable(args.file)}: OK ({len(policy.services)} service(s))")
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `config check`."""
    config = subparsers.add_parser("config", help="work with policy files")
    sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    parser = sub.add_parser("check", help="validate a policy file; exit 2 listing every problem",
                            description="Validate a policy file. Every problem is printed with "
                            "its field path and line; the exit code is 2 when there are any.")
    parser.add_argument("file", help="the policy YAML file")
    parser.set_defaults(func=check)
