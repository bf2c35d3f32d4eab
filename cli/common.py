"""What every medkit command shares: Temporal flags, policy loading, errors and output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from temporalio.client import Client
from temporalio.service import RPCError

from models.policy import PolicyFile
from models.policy_yaml import PolicyError, parse_policy, read_policy_bytes
from workers.client import TemporalTarget, connect

T = TypeVar("T")

DEFAULT_STATE_DIR = Path(".medkit")
DEFAULT_POLICY = DEFAULT_STATE_DIR / "policy.yaml"

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


class CommandError(Exception):
    """A failure to report to the user as one line, with exit code 1."""


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


def target_from(args: argparse.Namespace) -> TemporalTarget:
    """The Temporal target from flags and environment."""
    return TemporalTarget.from_env(args.address, args.namespace, args.task_queue)


def policy_path(args: argparse.Namespace) -> Path:
    """The policy file this command should read."""
    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("MEDKIT_CONFIG")
    return Path(env) if env else DEFAULT_POLICY


def load_policy(path: Path) -> PolicyFile:
    """Read and validate a policy file, or raise CommandError / PolicyError saying why."""
    try:
        text = read_policy_bytes(path)
    except FileNotFoundError:
        raise CommandError(f"policy file {path} not found (pass --config FILE or set "
                           "MEDKIT_CONFIG; `medkit dev` writes one for the demo)") from None
    except OSError as err:
        raise CommandError(f"cannot read policy file {path}: {err.strerror}") from None
    return parse_policy(text, str(path))


async def connect_or_fail(target: TemporalTarget) -> Client:
    """Connect, turning an unreachable server into a one-line error."""
    try:
        return await asyncio.wait_for(connect(target), timeout=10)
    except (RuntimeError, TimeoutError, RPCError) as err:
        raise CommandError(f"cannot reach Temporal at {target.address} "
                           f"(namespace {target.namespace}): {err or 'timed out'}") from None


def run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine."""
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def guarded(func: Any) -> Any:
    """Decorate a command: CommandError and PolicyError become `medkit: ...` and exit 1/2."""
    def wrapper(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except CommandError as err:
            print(f"medkit: {err}", file=sys.stderr)
            return 1
        except PolicyError as err:
            print(f"medkit: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # the reader (say `| head`) has gone; nothing left to say
            return 0
    wrapper.__doc__ = func.__doc__
    return wrapper


def emit(args: argparse.Namespace, value: BaseModel | list[Any] | dict[str, Any], text: str) -> None:
    """Print JSON (-o json) or the given human text."""
    if getattr(args, "output", "text") == "json":
        if isinstance(value, BaseModel):
            print(value.model_dump_json(by_alias=True))
        else:
            print(json.dumps(value, default=str))
    else:
        print(text)
