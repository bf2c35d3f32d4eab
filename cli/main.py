"""Entry point of the `medkit` console script."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

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
from cli.common import fail

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


class UsageError(Exception):
    """Arguments argparse refused (an unknown flag, a missing argument): exit code 2."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(f"{parser.prog}: {message}")
        self.parser = parser
        self.message = message


class CommandLineParser(argparse.ArgumentParser):
    """argparse's parser, raising its usage errors instead of printing them and exiting, so `run`
    can print them as the command line asked: JSON under `-o json`, argparse's text otherwise.
    Its subparsers are of this class too (argparse makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        """Raise the usage error for `run` to print."""
        raise UsageError(self, message)


def json_output_requested(argv: Sequence[str]) -> bool:
    """Whether the command line asks for `-o json`, read on its own: the full parser has just
    refused the command line, so it gives no namespace to ask."""
    probe = CommandLineParser(add_help=False)
    probe.add_argument("-o", "--output")
    try:
        requested, _ = probe.parse_known_args(argv)
    except UsageError:  # `-o` without a value
        return False
    return bool(requested.output == "json")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command group registered."""
    parser = CommandLineParser(
        prog="medkit",
        description="medkit: durable, workflow-orchestrated incident recovery on Temporal.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's parser a `_parser` default naming itself: the deepest one the
    command line reaches wins, so `run` can show that command's usage for arguments left over."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen command; return its exit code (2 for a usage error,
    printed as a JSON error object under `-o json` like every other error there)."""
    try:
        args, extras = build_parser().parse_known_args(argv)
        if extras:  # argparse would blame the top-level parser and show its usage
            args._parser.error(f"unrecognized arguments: {' '.join(extras)}")
    except UsageError as err:
        if json_output_requested(sys.argv[1:] if argv is None else argv):
            fail(str(err), argparse.Namespace(output="json"), "UsageError")
        else:
            err.parser.print_usage(sys.stderr)
            print(f"{err.parser.prog}: error: {err.message}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""Exit code when the reader of stdout went away (`| head`): what a Unix tool killed by SIGPIPE
returns, without Python's traceback."""


def main() -> None:
    """The console script: run the command, then exit with its code.

    A failure no command turned into a one-line error is a bug: its traceback is printed and the
    exit code is 1. It still leaves through the os._exit below like every other exit: unwinding
    into interpreter finalization is what made such failures abort (SIGABRT, exit 134).

    Every command's stdout ends here: when its reader has gone (`| head`), while the command
    writes or at this last flush, the command stops quietly with EXIT_BROKEN_PIPE."""
    try:
        code = _run_command()
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    # Exit without interpreter finalization: the Temporal core's threads can outlive the event
    # loop, and finalizing under them intermittently aborts the process (SIGABRT, exit 134)
    # after the command has already done its work and printed its answer.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def _run_command() -> int:
    """The command's exit code; a broken stdout is main's to handle."""
    try:
        return run()
    except SystemExit as done:  # argparse after --help, already printed
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception:
        traceback.print_exc()
        return 1


def _reader_gone() -> int:
    """Point stdout at /dev/null, so that nothing left in its buffer can fail a later flush,
    and return EXIT_BROKEN_PIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
