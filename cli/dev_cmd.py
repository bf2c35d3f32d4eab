"""`medkit dev`: the whole embedded stack in one foreground command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.runtime import Runtime

from activities.probes import read_pid
from activities.process import ProcessSupervisor
from cli.common import CommandError, SubParsers, guarded, load_policy, port_number
from demo.policy import DEMO_SERVICE, write_demo_policy
from detectors.health_poller import HealthBoard
from gateway.auth import AuthConfigError
from gateway.embedded import dev_auth, serve_embedded
from models.actions import RestartProcessAction
from workers.client import TemporalTarget
from workers.dev import (
    DevStackError,
    connect_when_ready,
    port_free,
    run_worker_and_poller,
    start_dev_server,
    state_dir_lock,
    stop_leftovers,
)
from workers.logging import configure_logging
from workers.metrics import metrics_runtime


def banner(args: argparse.Namespace, policy_file: Path, demo: bool,
           dashboard: str | None = None) -> str:
    """What the user sees once everything runs: where the UI and the dashboard are and how to
    break the demo. `dashboard` is the dashboard line's text (its URL and where the token is).
    Paths are absolute, so the commands work from any terminal."""
    state_dir = args.state_dir.resolve()
    lines = [
        "",
        "medkit is running.",
        f"  Temporal UI:   http://127.0.0.1:{args.ui_port}/namespaces/default/workflows",
        *([f"  Dashboard:     {dashboard}"] if dashboard else []),
        f"  Temporal:      127.0.0.1:{args.temporal_port} (namespace default, task queue medkit)",
        f"  Policy:        {policy_file}",
        f"  State:         {state_dir}/ (Temporal db, action ledger, logs)",
    ]
    base = f"http://127.0.0.1:{args.demo_port}"
    if demo:
        lines.append(f"  Demo service:  {base} (name '{DEMO_SERVICE}', supervised by medkit)")
    lines += [
        "",
        "Point the CLI at this stack (in another terminal):",
        f"  export TEMPORAL_ADDRESS=127.0.0.1:{args.temporal_port} "
        f"MEDKIT_CONFIG={shlex.quote(str(policy_file))}",
    ]
    if demo:
        lines += [
            "",
            "Break the demo and watch medkit recover it (in another terminal):",
            f"  curl -X POST {base}/admin/fault -d '{{\"mode\": \"unhealthy\"}}'   # health fails",
            f"  kill $(cat {shlex.quote(str(state_dir / 'demo.pid'))})                        # process dies",
            "  .venv/bin/medkit list --open",
            f"  .venv/bin/medkit status --watch recovery:{DEMO_SERVICE}:health",
            "",
            "See a step wait for your approval (the critical ladder asks before restarting):",
            f"  .venv/bin/medkit trigger --service {DEMO_SERVICE} --severity critical --key drill",
            f"  .venv/bin/medkit approve recovery:{DEMO_SERVICE}:drill --operator \"$USER\" "
            "--reason \"drill\"",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def run_dev(args: argparse.Namespace) -> None:
    """Start the server, the demo (unless --config), the worker and the poller; run until Ctrl-C."""
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with state_dir_lock(state_dir):  # before anything in it is touched
        await run_locked(args, state_dir)


async def run_locked(args: argparse.Namespace, state_dir: Path) -> None:
    """run_dev, holding the state dir."""
    supervisor = ProcessSupervisor(state_dir)
    demo = args.config is None
    await stop_leftovers(state_dir, supervisor, state_dir / "demo.pid" if demo else None)
    if demo:
        if not port_free(args.demo_port):
            raise CommandError(f"demo port {args.demo_port} is in use; pass --demo-port")
        policy_path = state_dir / "policy.yaml"
        write_demo_policy(policy_path, args.demo_port, state_dir)
    else:
        policy_path = Path(args.config)
    policy = load_policy(policy_path)
    if not port_free(args.dashboard_port):
        raise CommandError(f"dashboard port {args.dashboard_port} is in use; pass --dashboard-port")
    try:
        auth, token_file = dev_auth(state_dir)
    except AuthConfigError as err:
        raise CommandError(str(err)) from None
    token_hint = (f"operator token in {token_file}" if token_file
                  else "operator token: $MEDKIT_OPERATOR_TOKEN")
    dashboard = f"http://127.0.0.1:{args.dashboard_port}/dashboard/ ({token_hint})"
    board = HealthBoard(policy.services)
    print(f"starting the Temporal dev server (state in {state_dir}) ...", file=sys.stderr)
    server = await start_dev_server(state_dir, args.temporal_port, args.ui_port)
    try:
        target = TemporalTarget(address=f"127.0.0.1:{args.temporal_port}")
        runtime, sdk_metrics = metrics_runtime()
        Runtime.set_default(runtime, error_if_already_set=False)  # the client below uses it
        client = await connect_when_ready(target)
        if demo:
            spec = policy.service(DEMO_SERVICE).actions["restart"]
            assert isinstance(spec, RestartProcessAction)
            demo_pid = supervisor.spawn(DEMO_SERVICE, spec)
            print(f"started the demo service (pid {demo_pid}) ...", file=sys.stderr)
        print(banner(args, policy_path, demo, dashboard), file=sys.stderr, flush=True)
        # A task group, not gather: on Ctrl-C it waits for the dashboard's graceful shutdown.
        try:
            async with asyncio.TaskGroup() as stack:
                stack.create_task(run_worker_and_poller(client, target.task_queue, state_dir, policy,
                                                        supervisor, board, sdk_metrics))
                stack.create_task(serve_embedded(client, target, policy, state_dir,
                                                 args.dashboard_port, auth,
                                                 f"http://127.0.0.1:{args.ui_port}", board))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
    finally:
        try:
            pid = read_pid(str(state_dir / "demo.pid")) if demo else None
            if pid is not None:
                await supervisor.stop(pid, grace=3)
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)


async def run_dev_until_stopped(args: argparse.Namespace) -> None:
    """Run the stack until Ctrl-C or SIGTERM, then stop the demo and the dev server it started."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run_dev(args)


@guarded
def dev(args: argparse.Namespace) -> int:
    """Run the embedded stack in the foreground."""
    configure_logging(args.log_level)
    try:
        asyncio.run(run_dev_until_stopped(args))
    except DevStackError as err:
        raise CommandError(str(err)) from None
    print("\nmedkit dev stopped.", file=sys.stderr)
    return 0


def register(subparsers: SubParsers) -> None:
    """Add `dev`."""
    parser = subparsers.add_parser(
        "dev", help="run everything locally: Temporal dev server + UI, worker, health poller, demo",
        description="The embedded stack in one foreground command. Without --config it recovers "
        "the bundled demo service.")
    parser.add_argument("--config", type=Path, help="policy file (default: the bundled demo)")
    parser.add_argument("--state-dir", type=Path, default=Path(".medkit"),
                        help="state directory (default .medkit)")
    parser.add_argument("--temporal-port", type=port_number, default=7233, help="default 7233")
    parser.add_argument("--ui-port", type=port_number, default=8233, help="default 8233")
    parser.add_argument("--demo-port", type=port_number, default=8099, help="default 8099")
    parser.add_argument("--dashboard-port", type=port_number, default=8780,
                        help="the dashboard and operator API on 127.0.0.1 (default 8780)")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of the worker and the stack (default: WARNING)")
    parser.set_defaults(func=dev)
