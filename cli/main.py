"""Entry point of the `medkit` console script."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType

from cli import (
    config_cmd,
    detect_cmd,
    dev_cmd,
    incidents_cmd,
    operator_cmd,
    report_cmd,
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
    report_cmd,
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


def run(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen command; return its exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def main() -> None:
    """The console script: run the command, then exit with its code.

    A failure no command turned into a one-line error is a bug: its traceback is printed and the
    exit code is 1. It still leaves through the os._exit below like every other exit: unwinding
    into interpreter finalization is what made such failures abort (SIGABRT, exit 134)."""
    try:
        code = run()
    except SystemExit as done:  # argparse after --help or a usage error, already printed
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except Exception:
        traceback.print_exc()
        code = 1
    # Exit without interpreter finalization: the Temporal core's threads can outlive the event
    # loop, and finalizing under them intermittently aborts the process (SIGABRT, exit 134)
    # after the command has already done its work and printed its answer.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
