"""What every medkit command shares: Temporal flags, policy loading, errors and output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from models.policy import PolicyFile
from models.policy_yaml import PolicyError, parse_policy, read_policy_bytes
from workers import unreachable
from workers.client import TemporalTarget, connect

T = TypeVar("T")

DEFAULT_STATE_DIR = Path(".medkit")
DEFAULT_POLICY = DEFAULT_STATE_DIR / "policy.yaml"

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


class CommandError(Exception):
    """A failure to report to the user as one line, with exit code 1.

    `kind` names the failure for scripts: with `-o json` the error is printed as
    {"error": message, "type": kind}."""

    def __init__(self, message: str, kind: str = "CommandError") -> None:
        super().__init__(message)
        self.kind = kind


_TERMINAL_SEQUENCE = re.compile(
    # CSI, 7-bit (ESC [) or 8-bit: parameters, intermediates, final byte; clears, moves, colors
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    # OSC, DCS, SOS, PM, APC with their payload up to BEL or ST (or the end of the line):
    # window titles, hyperlinks, clipboard writes
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    # any other escape: ESC, intermediates, final byte (charset switches, ESC c full reset, ...)
    r"|\x1b[ -/]*[0-~]?"
)
_LINE_BREAK = re.compile("\r\n|[\t\n\r\v\f\x85\u2028\u2029]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls but tab and newline, DEL, the Unicode line and paragraph separators, and
the bidi overrides and isolates that reorder the text shown."""


def printable(text: str, *, multiline: bool = False) -> str:
    """`text` with nothing a terminal would act on rather than show, safe to print.

    Service names, summaries, reasons, evidence, labels and operator names come from outside
    (detectors, alerts, HTTP callers, policy files): printed raw, an ANSI sequence in a
    detection summary could clear, recolor or retitle an operator's terminal, and a line break
    could forge a line of a table. Escape sequences go whole, with their parameters and
    payloads; other C0/C1 controls, DEL and bidi overrides are dropped. Line breaks and tabs
    become spaces, so a field stays on its line; with `multiline` (for a whole message whose
    layout has its own lines) newlines and tabs stay and a carriage return is dropped.
    """
    text = _TERMINAL_SEQUENCE.sub("", text)
    text = text.replace("\r\n", "\n") if multiline else _LINE_BREAK.sub(" ", text)
    return _CONTROL.sub("", text)


def add_temporal_args(parser: argparse.ArgumentParser) -> None:
    """--address, --namespace and --task-queue, defaulting from the environment."""
    group = parser.add_argument_group("Temporal")
    group.add_argument("--address", help="Temporal frontend host:port "
                       "(default: $TEMPORAL_ADDRESS or 127.0.0.1:7233)")
    group.add_argument("--namespace", help="namespace (default: $TEMPORAL_NAMESPACE or default)")
    group.add_argument("--task-queue", help="task queue of medkit's workers "
                       "(default: $MEDKIT_TASK_QUEUE or medkit)")


def add_output_arg(parser: argparse.ArgumentParser) -> None:
    """-o text|json."""
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="output format (default: text)")


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """--config FILE, defaulting to $MEDKIT_CONFIG or the policy `medkit dev` writes."""
    parser.add_argument("--config", type=Path, help="policy file (default: $MEDKIT_CONFIG or "
                        f"{DEFAULT_POLICY}, which `medkit dev` writes)")


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`, so a value out of range is a usage
    error (exit 2) naming the flag, not a traceback or a setting that silently misbehaves."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a number, or thousands of digits
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{printable(text)[:40]!r} is not an integer from {low} to {high}")
        return value
    return integer


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0 and at most an hour (not NaN or inf)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{printable(text)[:40]!r} is not a number of seconds "
                                         "above 0 and at most 3600")
    return seconds


port_number = int_between(1, 65535)
"""An argparse type for a TCP port to listen on."""

LIST_LIMIT = 10_000
"""The most rows a listing's --limit may ask for: recoveries (`list`; the HTTP API's limit is
500) or incidents (`incidents`)."""


def target_from(args: argparse.Namespace) -> TemporalTarget:
    """The Temporal target from flags and environment."""
    return TemporalTarget.from_env(args.address, args.namespace, args.task_queue)


def policy_path(args: argparse.Namespace) -> Path:
    """The policy file this command should read."""
    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("MEDKIT_CONFIG")
    return Path(env) if env else DEFAULT_POLICY


def load_policy(path: Path, *, hint: bool = True) -> PolicyFile:
    """Read and validate a policy file, or raise CommandError / PolicyError saying why; `hint`
    says how to pass another file (for commands that take --config)."""
    try:
        text = read_policy_bytes(path)
    except FileNotFoundError:
        how = (" (pass --config FILE or set MEDKIT_CONFIG; `medkit dev` writes one for the demo)"
               if hint else "")
        raise CommandError(f"policy file {path} not found{how}", "PolicyFileNotFound") from None
    except OSError as err:
        raise CommandError(f"cannot read policy file {path}: {err.strerror}",
                           "PolicyFileUnreadable") from None
    return parse_policy(text, str(path))


CONNECT_TIMEOUT_SECONDS = 10
"""How long a command waits for Temporal to answer its first calls before giving up."""

START_HINT = f"{unreachable.SERVER_HINT} (`medkit dev` starts one)"

UNREACHABLE = "TemporalUnreachable"
"""The error type (`-o json`) when Temporal cannot be reached at the address given."""
TEMPORAL_ERROR = "TemporalError"
"""The error type (`-o json`) when Temporal refused a request."""


def unreachable_message(target: TemporalTarget, err: BaseException) -> str:
    """Why the connection to Temporal failed, in one plain line (workers.unreachable), with the
    CLI's wait and its hint to start a dev server."""
    return unreachable.unreachable_message(target, err, CONNECT_TIMEOUT_SECONDS, START_HINT)


def namespace_missing(target: TemporalTarget) -> str:
    """The one line for a namespace the server does not have."""
    return (f"namespace {target.namespace!r} not found on the Temporal server at "
            f"{target.address} (pass --namespace or set TEMPORAL_NAMESPACE)")


async def connect_or_fail(target: TemporalTarget) -> Client:
    """Connect and check the namespace exists, or fail with a one-line CommandError.

    Connecting does not check the namespace: without this check a wrong one surfaces later as a
    misleading "no recovery with id ..." or, in `medkit watch`, as detectors that run and never
    manage to report. When the credentials may not describe namespaces the check is skipped."""
    async def connect_and_check() -> Client:
        client = await connect(target)
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=target.namespace))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CommandError(namespace_missing(target), "NamespaceNotFound") from None
            if err.status != RPCStatusCode.PERMISSION_DENIED:
                raise
        return client

    try:
        return await asyncio.wait_for(connect_and_check(), timeout=CONNECT_TIMEOUT_SECONDS)
    except (RuntimeError, TimeoutError, ValueError) as err:
        raise CommandError(unreachable_message(target, err), UNREACHABLE) from None
    except RPCError as err:
        if err.status == RPCStatusCode.UNAVAILABLE:
            raise CommandError(unreachable_message(target, err), UNREACHABLE) from None
        raise CommandError(f"Temporal at {target.address} refused the namespace check: "
                           f"{err.message}", TEMPORAL_ERROR) from None


def run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine."""
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def temporal_failure(err: BaseException, args: argparse.Namespace) -> CommandError | None:
    """The one-line error for a Temporal failure no command handled itself, or None if it is
    not one.

    Commands that connect through connect_or_fail get their one-liners there; this catches the
    rest (a command connecting directly, as `medkit worker` does, or an RPC failing mid-command)
    so that no Temporal failure ends in a traceback."""
    target = target_from(args) if hasattr(args, "address") else None
    text = str(err)
    if isinstance(err, RPCError):
        if target is not None and err.status == RPCStatusCode.UNAVAILABLE:
            return CommandError(unreachable_message(target, err), UNREACHABLE)
        if target is not None and _names_missing_namespace(err):
            return CommandError(namespace_missing(target), "NamespaceNotFound")
        return CommandError(f"Temporal refused the request ({err.status.name}): {err.message}",
                            TEMPORAL_ERROR)
    if target is None:
        return None
    if isinstance(err, RuntimeError) and text.startswith("Failed client connect"):
        return CommandError(unreachable_message(target, err), UNREACHABLE)
    if isinstance(err, ValueError) and text.startswith("invalid target URL"):
        return CommandError(unreachable_message(target, err), UNREACHABLE)
    if (isinstance(err, RuntimeError) and text.startswith("Worker validation failed")
            and f"Namespace {target.namespace} " in text and "NotFound" in text):
        return CommandError(namespace_missing(target), "NamespaceNotFound")
    return None


def _names_missing_namespace(err: RPCError) -> bool:
    """Whether the server said the namespace (not a workflow) does not exist."""
    if err.status != RPCStatusCode.NOT_FOUND:
        return False
    try:
        details = err.grpc_status.details
    except Exception:  # undecodable details: not what we look for
        return False
    return any(d.type_url.endswith(".NamespaceNotFoundFailure") for d in details)


def guarded(func: Any) -> Any:
    """Decorate a command: CommandError and PolicyError become `medkit: ...` (or, with `-o json`,
    a JSON object) on stderr and exit 1/2, and so do arguments a model refuses (exit 2) and
    Temporal failures (temporal_failure); every message is made printable first. A reader of
    stdout gone (BrokenPipeError) is left to cli.main, which handles it for every command."""
    def wrapper(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except CommandError as err:
            fail(str(err), args, err.kind)
            return 1
        except PolicyError as err:
            fail(str(err), args, "PolicyError")
            return 2
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # not a file error: cli.main ends the command quietly
            raise
        except ValidationError as err:
            fail(invalid_input_message(err, args), args, "InvalidInput")
            return 2
        except (RPCError, RuntimeError, ValueError) as err:
            failure = temporal_failure(err, args)
            if failure is None:
                raise
            fail(str(failure), args, failure.kind)
            return 1
        except OSError as err:  # a file named by a flag or a variable: a TLS cert, a state dir
            where = f" {err.filename}" if err.filename else ""
            fail(f"cannot use{where}: {err.strerror or err}", args, "FileError")
            return 1
    wrapper.__doc__ = func.__doc__
    return wrapper


def invalid_input_message(err: ValidationError, args: argparse.Namespace) -> str:
    """What a command's arguments broke, one problem per `; `: a field the command line set is
    named by its flag (`--operator: String should have at least 1 character`), so an empty
    `--operator "$USER"` says which flag to fix instead of ending in a traceback."""
    problems = []
    for error in err.errors():
        field = ".".join(str(part) for part in error["loc"])
        top = str(error["loc"][0]) if error["loc"] else ""
        if top and hasattr(args, top):
            field = "--" + field.replace("_", "-")
        problems.append(f"{field}: {error['msg']}" if field else error["msg"])
    return "; ".join(problems)


def _to_stderr(args: argparse.Namespace | None, key: str, message: str, kind: str,
               text: str) -> None:
    """Print `text` on stderr, or with `-o json` one JSON object {key: message, "type": kind},
    so a script reading JSON gets its errors and warnings as JSON too (json.dumps escapes every
    control character)."""
    if args is not None and getattr(args, "output", "text") == "json":
        print(json.dumps({key: message, "type": kind}), file=sys.stderr)
        return
    print(text, file=sys.stderr)


def fail(message: str, args: argparse.Namespace | None = None, kind: str = "CommandError") -> None:
    """Print an error on stderr: `medkit: ...`, with server and file content in it made
    printable, or with `-o json` {"error": message, "type": kind}."""
    _to_stderr(args, "error", message, kind, f"medkit: {printable(message, multiline=True)}")


def warn(message: str, args: argparse.Namespace, kind: str) -> None:
    """A warning on stderr that does not fail the command: `medkit: warning: ...` on one line,
    or with `-o json` {"warning": message, "type": kind}."""
    _to_stderr(args, "warning", message, kind, f"medkit: warning: {printable(message)}")


def emit(args: argparse.Namespace, value: BaseModel | list[Any] | dict[str, Any], text: str) -> None:
    """Print JSON (-o json) or the given human text.

    JSON is exact and plain ASCII: json.dumps escapes every control character, where pydantic's
    own dump leaves C1 controls and DEL raw. The text is made printable once more as a whole,
    after each formatter has made its fields printable (which keeps a field on its line)."""
    if getattr(args, "output", "text") == "json":
        data = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
        print(json.dumps(data, default=str))
    else:
        print(printable(text, multiline=True))
