"""`medkit worker`: the Temporal worker as a long-running service."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
from temporalio.runtime import Runtime

from cli.common import (
    DEFAULT_STATE_DIR,
    CommandError,
    SubParsers,
    add_temporal_args,
    guarded,
    load_policy,
    run,
    target_from,
)
from cli.incidents_cmd import _first_line
from models.policy import PolicyFile
from models.policy_yaml import PolicyError
from store.ledger import InvalidDatabaseURL, parse_database_url, shown_database_url
from workers.client import connect
from workers.logging import configure_logging, json_logging_runtime
from workers.metrics import DEFAULT_METRICS_ADDRESS, METRICS_ADDRESS_ENV, metrics_address, metrics_runtime
from workers.metrics_server import MetricsAddressInUse
from workers.worker import run_worker


def worker_policy(config: Path | None) -> PolicyFile:
    """The worker's own policy file (--config or $MEDKIT_CONFIG, never a guess), or a one-line
    CommandError: it is the authority over what the worker runs, so there is no default."""
    env = os.environ.get("MEDKIT_CONFIG")
    path = config if config is not None else Path(env) if env else None
    if path is None:
        raise CommandError("the worker needs its own policy file, the authority over what it may "
                           "run: pass --config FILE or set MEDKIT_CONFIG")
    try:
        return load_policy(path)
    except PolicyError as err:
        first = " ".join(str(err.problems[0]).split()) if err.problems else "invalid"
        more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
        raise CommandError(f"policy file {path} is invalid: {first}{more}; "
                           f"`medkit config check {path}` lists every problem") from None


def shown_database(url: str | None) -> str:
    """$MEDKIT_DATABASE_URL as it may be printed: its password hidden (the state dir's SQLite
    file when unset)."""
    if not url:
        return "the state dir's SQLite file"
    try:
        return shown_database_url(parse_database_url(url))
    except InvalidDatabaseURL:
        return "$MEDKIT_DATABASE_URL (not a valid database URL)"


@guarded
def worker(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT; drain running activities and exit 0."""
    policy = worker_policy(args.config)
    try:
        address = metrics_address(args.metrics_address)
    except ValueError as err:
        raise CommandError(str(err)) from None
    configure_logging(args.log_level)
    target = target_from(args)

    async def go() -> None:
        sdk_metrics = None
        if address is not None:
            runtime, sdk_metrics = metrics_runtime()
        else:
            runtime = json_logging_runtime()
        Runtime.set_default(runtime, error_if_already_set=False)  # the client below uses it
        client = await connect(target)
        database = os.environ.get("MEDKIT_DATABASE_URL")
        try:
            await run_worker(client, target.task_queue, args.state_dir, policy, database, address,
                             sdk_metrics)
        except MetricsAddressInUse as err:
            raise CommandError(str(err)) from None
        except InvalidDatabaseURL as err:
            raise CommandError(f"cannot open the action ledger at {shown_database(database)}: "
                               f"{err}") from None
        except (NoSuchModuleError, ImportError) as err:
            raise CommandError(f"no database driver for {shown_database(database)}: {err}") from None
        except SQLAlchemyError as err:
            raise CommandError(f"cannot open the action ledger at {shown_database(database)}: "
                               f"{_first_line(err)}") from None

    run(go())
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `worker`."""
    parser = subparsers.add_parser(
        "worker", help="run the medkit Temporal worker (deploy this as a service)",
        description="Run RecoveryWorkflow and every activity on the task queue. SIGTERM drains "
        "running activities (up to 30 s) and exits 0. The worker's own policy file is the "
        "authority: an action, probe or route a workflow asks for that differs from it is refused. "
        "TLS and API keys come from Temporal's environment configuration (TEMPORAL_API_KEY, "
        "TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH, ...).")
    add_temporal_args(parser)
    parser.add_argument("--config", type=Path,
                        help="the worker's policy file (required: --config or $MEDKIT_CONFIG); "
                        "restart the worker after editing it")
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("MEDKIT_STATE_DIR", DEFAULT_STATE_DIR)),
                        help="where the action ledger and supervised-process logs live "
                        "(default: $MEDKIT_STATE_DIR or .medkit)")
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help=f"serve /metrics (Prometheus) and /healthz here, or 'off' "
                        f"(default: ${METRICS_ADDRESS_ENV} or {DEFAULT_METRICS_ADDRESS})")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: INFO)")
    parser.set_defaults(func=worker)
