"""Entry point of the `medkit` console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from cli import (
    config_cmd,
    detect_cmd,
    dev_cmd,
    incidents_cmd,
    operator_cmd,
    serve_cmd,
    watch_cmd,
    worker_cmd,
)

COMMAND_MODULES: tuple[ModuleType, ...] = (
    dev_cmd,
    worker_cmd,
    operator_cmd,
    config_cmd,
    detect_cmd,
    incidents_cmd,
    watch_cmd,
    serve_cmd,
)
"""Each module has `register(subparsers)` which adds its subcommands with a `func` default."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="medkit",
        description="medkit: durable, workflow-orchestrated incident recovery on Temporal.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and run the chosen command; its return value is the exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    sys.exit(func(args))
