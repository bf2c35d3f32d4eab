"""`medkit worker`: the Temporal worker as a long-running service."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.common import DEFAULT_STATE_DIR, SubParsers, add_temporal_args, guarded, run, target_from
from workers.client import connect
from workers.logging import configure_logging
from workers.worker import run_worker


@guarded
def worker(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT; drain running activities and exit 0."""
    configure_logging(args.log_level)
    target = target_from(args)

    async def go() -> None:
        client = await connect(target)
        await run_worker(client, target.task_queue, args.state_dir, os.environ.get("MEDKIT_DATABASE_URL"))

    run(go())
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `worker`."""
    parser = subparsers.add_parser(
        "worker", help="run the medkit Temporal worker (deploy this as a service)",
        description="Run RecoveryWorkflow and every activity on the task queue. SIGTERM drains "
        "running activities (up to 30 s) and exits 0. TLS and API keys come from Temporal's "
        "environment configuration (TEMPORAL_API_KEY, TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH, "
        "TEMPORAL_TLS_CLIENT_KEY_PATH, ...).")
    add_temporal_args(parser)
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("MEDKIT_STATE_DIR", DEFAULT_STATE_DIR)),
                        help="where the action ledger and supervised-process logs live "
                        "(default: $MEDKIT_STATE_DIR or .medkit)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=worker)
