"""`medkit watch`: the built-in detectors as one long-running service.

Runs the health poller, the host forecaster and the anomaly watcher that the policy file
configures; each detection starts or joins the service's recovery on Temporal (signal-with-start).
Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog

from cli.common import (
    CommandError,
    SubParsers,
    add_config_arg,
    add_temporal_args,
    connect_or_fail,
    guarded,
    load_policy,
    policy_path,
    printable,
    target_from,
)
from detectors.watch import Watch
from workers.dev import reporter
from workers.logging import configure_logging


async def run_watch(args: argparse.Namespace) -> None:
    """Load the policy, connect, and run every detector until SIGTERM or SIGINT."""
    path = policy_path(args)
    policy = load_policy(path)
    target = target_from(args)
    client = await connect_or_fail(target)
    watch = Watch(policy, reporter(client, target.task_queue))
    if watch.empty:
        raise CommandError(f"nothing to watch in {path}: {printable(watch.why_empty())}")
    print(f"medkit watch: policy {path}, Temporal {target.address} (namespace "
          f"{target.namespace}, task queue {target.task_queue})", file=sys.stderr)
    for line in watch.describe():  # names, paths and URLs from the policy file
        print(f"  watching {printable(line)}", file=sys.stderr)
    sys.stderr.flush()
    log = structlog.get_logger("medkit.watch")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("watch started", services=[s.name for s in policy.services],
             host=policy.host is not None, anomaly_series=len(watch.anomaly.series) if watch.anomaly else 0)
    running = asyncio.create_task(watch.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if running.done():
        log.error("a detector stopped", exc_info=running.exception())
        raise CommandError(f"a detector stopped unexpectedly: {running.exception()!r}")
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    log.info("watch stopped")
    print("medkit watch stopped.", file=sys.stderr)


@guarded
def watch(args: argparse.Namespace) -> int:
    """Run the detectors in the foreground."""
    configure_logging(args.log_level)
    asyncio.run(run_watch(args))
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `watch`."""
    parser = subparsers.add_parser(
        "watch", help="run the detectors: health poller, host forecaster, anomaly watcher",
        description="Watch every service in the policy file (health polling), this host "
        "(the `host:` section) and metric series (the `anomaly:` section); each detection starts "
        "or joins the service's recovery. Stops on SIGTERM or Ctrl-C.")
    add_config_arg(parser)
    add_temporal_args(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: INFO)")
    parser.set_defaults(func=watch)
