"""Local process actions against real processes: medkit signals only the process it can prove is
the service, and a worker dying in the middle of a restart never leaves two copies running.

Every test starts real processes (the demo service, `sleep` decoys, a worker in a subprocess
that SIGKILLs itself) and kills all of them before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deps import ActivityDeps
from activities.process import ProcessActivities, ProcessSupervisor
from activities.process_identity import ProcessIdentity, identity_file, read_identity
from activities.process_pool import ProcessPool
from activities.process_signal import PinnedProcess
from activities.scale import ScaleActivities
from models.actions import ActionRequest, ActionResult
from tests.conftest import DemoService, free_port, wait_for_port
from tests.pid_reuse import CAN_REUSE_PIDS, new_group_with_pid

ROOT = Path(__file__).parent.parent
INFO = {"workflow_id": "recovery:svc:t", "workflow_run_id": "run-1", "activity_id": "1"}
"""The step every restart here runs as: the same info is a retry of the same step."""


class Processes:
    """Processes a test started or caused, all killed when it ends."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []
        self.ports: list[int] = []

    def track(self, pid: int) -> psutil.Process:
        """Kill pid at the end (psutil remembers its create time, so a reused pid is spared)."""
        proc = psutil.Process(pid)
        self.procs.append(proc)
        return proc

    def port(self, port: int) -> int:
        """Kill every demo service started for port at the end, listening yet or not."""
        self.ports.append(port)
        return port

    def kill_all(self) -> None:
        """Kill every tracked process and every demo service for a tracked port, and reap them."""
        for port in self.ports:
            for pid in demos_on(port):
                with contextlib.suppress(psutil.Error):
                    self.procs.append(psutil.Process(pid))
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(self.procs, timeout=5)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """The test's processes, killed afterwards."""
    owned = Processes()
    try:
        yield owned
    finally:
        owned.kill_all()


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[ActivityDeps]:
    """Real activity dependencies; the ledger is a SQLite file a subprocess worker can share."""
    deps = ActivityDeps.create(tmp_path / "state")
    yield deps
    await deps.http.aclose()


@pytest.fixture
def supervisor(deps: ActivityDeps) -> ProcessSupervisor:
    """The supervisor the test's restarts use."""
    return ProcessSupervisor(deps.state_dir)


def listeners(port: int) -> set[int]:
    """Pids of the processes listening on port."""
    return {c.pid for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}


def demo_argv(port: int) -> list[str]:
    """How the demo service on port is started."""
    return [sys.executable, "-m", "demo.service", "--port", str(port)]


def demos_on(port: int) -> list[int]:
    """Pids of live demo service processes started for port."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[1:] == demo_argv(port)[1:] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def restart_request(port: int, pid_file: Path, log_file: Path, probe: str = "http") -> ActionRequest:
    """A restart of the demo service on port, ready when its probe passes."""
    ready: dict[str, Any] = ({"kind": "http", "url": f"http://127.0.0.1:{port}/healthz"} if probe == "http"
                             else {"kind": "tcp", "port": port})
    return ActionRequest.model_validate({
        "workflow_id": INFO["workflow_id"], "service": "svc", "action_name": "restart", "reason": "test",
        "spec": {"kind": "restart_process", "argv": demo_argv(port), "pid_file": str(pid_file),
                 "log_file": str(log_file), "grace": "30s", "ready_probe": ready, "ready_timeout": "30s"},
    })


async def restart(deps: ActivityDeps, supervisor: ProcessSupervisor, request: ActionRequest) -> ActionResult:
    """Run restart_process in this process as the step INFO names."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="restart_process", workflow_id=INFO["workflow_id"],
                                   workflow_run_id=INFO["workflow_run_id"], activity_id=INFO["activity_id"])
    result: ActionResult = await env.run(ProcessActivities(deps, supervisor).restart_process, request)
    return result


async def refused(deps: ActivityDeps, supervisor: ProcessSupervisor,
                  request: ActionRequest) -> ApplicationError:
    """Run a restart that must fail with an ApplicationError; return it."""
    with pytest.raises(ApplicationError) as caught:
        await restart(deps, supervisor, request)
    return caught.value


def sleeper(processes: Processes) -> subprocess.Popen[bytes]:
    """A decoy: a process that is not the service."""
    decoy = subprocess.Popen(["sleep", "300"], start_new_session=True)
    processes.track(decoy.pid)
    return decoy


def worker_process(state_dir: Path, request: ActionRequest, **extra: Any) -> subprocess.CompletedProcess[str]:
    """Run restart_process in a separate worker process (tests/restart_worker.py) as step INFO."""
    args = {"state_dir": str(state_dir), "request": request.model_dump(mode="json"), "info": INFO, **extra}
    return subprocess.run([sys.executable, "-m", "tests.restart_worker", json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


# ----- identity: only the service is signalled ----------------------------------------------

@pytest.mark.parametrize("record", ["none", "of_a_dead_pid", "pid_reused"])
async def test_decoy_pid_in_the_pid_file_is_left_alone_and_the_service_started(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes, record: str
) -> None:
    port = processes.port(free_port())
    pid_file = tmp_path / "svc.pid"
    request = restart_request(port, pid_file, tmp_path / "svc.log")
    decoy = sleeper(processes)
    if record == "of_a_dead_pid":  # medkit started the service, it died, someone wrote another pid
        first = processes.track(supervisor.spawn("svc", request.spec))  # type: ignore[arg-type]
        first.kill()
        first.wait(5)
    elif record == "pid_reused":  # the record names this pid, but it was another process then
        decoy_now = ProcessIdentity.of(psutil.Process(decoy.pid))
        identity_file(pid_file).write_text(dataclasses.replace(
            decoy_now, create_time=decoy_now.create_time - 60, cmdline=tuple(demo_argv(port))).to_json())
    pid_file.write_text(f"{decoy.pid}\n")

    result = await restart(deps, supervisor, request)

    assert decoy.poll() is None, "the decoy was signalled"
    new_pid = int(str(result.data["new_pid"]))
    processes.track(new_pid)
    assert result.ok and f"pid {decoy.pid} " in result.detail and "left it alone" in result.detail
    assert int(pid_file.read_text()) == new_pid and listeners(port) == {new_pid}
    recorded = read_identity(pid_file)
    assert recorded is not None and recorded.pid == new_pid
    assert recorded.cmdline == tuple(demo_argv(port))


async def test_service_started_outside_medkit_is_restarted_by_its_command_line(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, demo_service: DemoService,
    processes: Processes,
) -> None:
    """A bare pid file (no identity record) is trusted when the pid runs the configured argv."""
    processes.port(demo_service.port)
    old_pid = demo_service.pid()
    result = await restart(deps, supervisor, restart_request(demo_service.port, demo_service.pid_file,
                                                             tmp_path / "svc.log"))
    assert demo_service.process is not None and demo_service.process.wait(5) is not None
    assert result.ok and result.data["old_pid"] == old_pid and "stopped by SIGTERM" in result.detail
    assert listeners(demo_service.port) == {result.data["new_pid"]} == {demo_service.pid()}


@pytest.mark.parametrize("whose", ["init", "zero", "the worker", "the worker's parent"])
async def test_pid_file_naming_init_or_the_worker_is_refused_for_good(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes, whose: str
) -> None:
    pids: dict[str, Callable[[], int]] = {"init": lambda: 1, "zero": lambda: 0, "the worker": os.getpid,
                                          "the worker's parent": os.getppid}
    pid = pids[whose]()
    port = processes.port(free_port())
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(f"{pid}\n")
    request = restart_request(port, pid_file, tmp_path / "svc.log")

    error = await refused(deps, supervisor, request)
    dry = await refused(deps, supervisor, request.model_copy(update={"dry_run": True}))
    with pytest.raises(ApplicationError) as stop_error:
        await supervisor.stop(pid, grace=1)

    for err in (error, dry, stop_error.value):
        assert (err.type, err.non_retryable) == ("UnsafeProcess", True)
        assert f"refusing to signal pid {pid}" in str(err)
    assert int(pid_file.read_text()) == pid and not listeners(port), "nothing was started"
    assert psutil.pid_exists(os.getppid())


async def test_a_service_program_the_kernel_cannot_run_is_a_permanent_error(
    deps: ActivityDeps, supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    """ENOEXEC (a script without `#!`) escaped spawn as a plain, retried OSError."""
    script = tmp_path / "serve.sh"
    script.write_text("exec python3 -m demo.service\n")
    script.chmod(0o755)
    request = restart_request(free_port(), tmp_path / "svc.pid", tmp_path / "svc.log")
    request = request.model_copy(update={"spec": request.spec.model_copy(update={"argv": [str(script)]})})
    error = await refused(deps, supervisor, request)
    assert (error.type, error.non_retryable) == ("CommandNotFound", True)
    assert "Exec format error" in error.message


async def test_stop_leaves_a_pid_it_cannot_vouch_for_alone(
    supervisor: ProcessSupervisor, processes: Processes
) -> None:
    """ProcessSupervisor.stop signals only its own unreaped children or a matching identity."""
    decoy = sleeper(processes)
    stale = dataclasses.replace(ProcessIdentity.of(psutil.Process(decoy.pid)), cmdline=("other",))
    assert await supervisor.stop(decoy.pid, grace=1) == "left alone: medkit has no record of starting it"
    assert (await supervisor.stop(decoy.pid, grace=1, identity=stale)
            == "left alone: it is no longer the process medkit started")
    assert decoy.poll() is None
    matching = ProcessIdentity.of(psutil.Process(decoy.pid))
    assert await supervisor.stop(decoy.pid, grace=60, identity=matching) == "stopped by SIGTERM"
    assert decoy.wait(5) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the worker as another user than "
                                               "the service's")
async def test_process_the_worker_may_not_signal_is_a_permanent_access_denied(
    processes: Processes,
) -> None:
    """A worker running as `nobody` is denied (EPERM) the root-owned service: a real AccessDenied."""
    shared = Path(tempfile.mkdtemp(prefix="medkit-denied-"))
    try:
        shared.chmod(0o777)
        port = processes.port(free_port())
        service = subprocess.Popen(demo_argv(port), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        processes.track(service.pid)
        (shared / "svc.pid").write_text(f"{service.pid}\n")
        await asyncio.to_thread(wait_for_port, port)
        request = restart_request(port, shared / "svc.pid", shared / "svc.log")

        done = worker_process(shared / "state", request, user="nobody")

        outcome = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
        assert outcome.get("type") == "AccessDenied", (done.returncode, done.stdout, done.stderr)
        assert outcome["non_retryable"] is True
        assert f"pid {service.pid}" in outcome["message"]
        assert service.poll() is None and listeners(port) == {service.pid}
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def other_users_process(processes: Processes, argv: list[str]) -> subprocess.Popen[bytes]:
    """argv run as `nobody`: the same command line as the service, another user's process."""
    other = subprocess.Popen(argv, user="nobody", stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    proc = processes.track(other.pid)
    for _ in range(200):  # until the kernel shows argv, as a scan of the processes reads it
        if proc.cmdline() == argv:
            break
        time.sleep(0.01)
    return other


def sleep_restart(pid_file: Path, log_file: Path, argv: list[str]) -> ActionRequest:
    """A restart of a service whose argv is a plain `sleep` (no port, no ready probe)."""
    return ActionRequest.model_validate({
        "workflow_id": INFO["workflow_id"], "service": "svc", "action_name": "restart", "reason": "test",
        "spec": {"kind": "restart_process", "argv": argv, "pid_file": str(pid_file),
                 "log_file": str(log_file), "grace": "2s"},
    })


async def restart_as_step(deps: ActivityDeps, supervisor: ProcessSupervisor, request: ActionRequest,
                          activity_id: str) -> ActionResult:
    """Run restart_process as step `activity_id` of INFO's run."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="restart_process", workflow_id=INFO["workflow_id"],
                                   workflow_run_id=INFO["workflow_run_id"], activity_id=activity_id)
    result: ActionResult = await env.run(ProcessActivities(deps, supervisor).restart_process, request)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to start a process as another user and "
                                               "to be a worker the kernel would let signal it")
async def test_another_users_process_running_the_argv_is_never_signalled(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    """A bare pid file (no identity record) naming a process of another user that runs the
    service's argv: a root worker used to take the command line as proof, SIGTERM it and start
    its own copy (as root). It is not a process medkit started nor one it would start, so the
    restart is refused, non-retryably, and the process is left alone."""
    argv = ["sleep", "307"]
    other = other_users_process(processes, argv)
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(f"{other.pid}\n")
    request = sleep_restart(pid_file, tmp_path / "svc.log", argv)

    for attempt in (request, request.model_copy(update={"dry_run": True})):
        with pytest.raises(ApplicationError) as caught:
            await restart(deps, supervisor, attempt)
        assert (caught.value.type, caught.value.non_retryable) == ("AccessDenied", True)
        assert f"pid {other.pid}" in str(caught.value) and "nobody" in str(caught.value)

    assert other.poll() is None, "another user's process was signalled"
    assert int(pid_file.read_text()) == other.pid and read_identity(pid_file) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the files to another user and "
                                               "to be a worker the kernel would let signal anything")
async def test_an_identity_record_written_by_another_user_is_no_proof(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    """The pid file's directory is one the service's own user writes (it keeps its own pid file
    there, say). That user writes a pid file and an identity record describing a process of
    its choice, which /proc shows anyone; a root worker took the record for its own and
    SIGTERMed that process. A record only proves what the worker wrote: one another user owns,
    or may write, is ignored, and the pid is judged by its command line and user instead."""
    nobody = pwd.getpwnam("nobody")
    victim = sleeper(processes)
    shared = tmp_path / "run"
    shared.mkdir()
    pid_file = shared / "svc.pid"
    identity_file(pid_file).write_text(ProcessIdentity.of(psutil.Process(victim.pid)).to_json())
    pid_file.write_text(f"{victim.pid}\n")
    for path in (shared, pid_file, identity_file(pid_file)):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    request = sleep_restart(pid_file, tmp_path / "svc.log", ["sleep", "309"])

    result = await restart(deps, supervisor, request)
    processes.track(int(str(result.data["new_pid"])))

    assert victim.poll() is None, "a process named by another user's identity record was signalled"
    assert result.ok and f"pid {victim.pid} " in result.detail and "left it alone" in result.detail
    recorded = read_identity(pid_file)
    assert recorded is not None and recorded.pid == result.data["new_pid"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to start a process as another user and "
                                               "to be a worker the kernel would let signal it")
async def test_a_retry_after_a_crash_before_spawn_does_not_adopt_another_users_process(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    """The first attempt recorded its intent to start the service and died before starting it;
    meanwhile another user started the same argv. The retry used to adopt that process as the
    one the crashed attempt started (any live process running argv since the intent), record it
    as medkit's, and so the next restart SIGTERMed it. Only the worker's own user's processes
    can be what it started."""
    argv = ["sleep", "308"]
    pid_file = tmp_path / "svc.pid"
    request = sleep_restart(pid_file, tmp_path / "svc.log", argv)
    key = f"{INFO['workflow_id']}/{INFO['workflow_run_id']}/{INFO['activity_id']}"
    deps.ledger.begin(key, workflow_id=INFO["workflow_id"], service="svc", activity="restart_process")
    deps.ledger.progress(key, old_pid=None, spawn_token=uuid.uuid4().hex,
                         spawn_intent_at=time.time(), new_pid=None)
    other = other_users_process(processes, argv)

    retried = await restart_as_step(deps, supervisor, request, INFO["activity_id"])
    processes.track(int(str(retried.data["new_pid"])))
    later = await restart_as_step(deps, supervisor, request, "2")
    processes.track(int(str(later.data["new_pid"])))

    assert retried.data["new_pid"] != other.pid, "another user's process was adopted as medkit's"
    assert other.poll() is None, "another user's process was signalled"
    assert psutil.Process(int(str(later.data["new_pid"]))).uids().real == os.getuid()


# ----- crash window: a retry adopts what the crashed attempt started -------------------------

@pytest.mark.parametrize("crash_at", ["new_pid", "identity"])
async def test_worker_killed_between_spawn_and_ledger_write_leaves_one_service(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, demo_service: DemoService,
    processes: Processes, crash_at: str,
) -> None:
    """The first attempt runs in a worker process that SIGKILLs itself right after starting the
    service (before the ledger has its pid, or before even the identity record is written); the
    retry, here, must find that process and adopt it instead of starting a second copy."""
    port = processes.port(demo_service.port)
    log_file = tmp_path / "restarted.log"
    request = restart_request(port, demo_service.pid_file, log_file)
    old_pid = demo_service.pid()

    crashed = worker_process(deps.state_dir, request, crash_at=crash_at)

    assert crashed.returncode == -9, (crashed.stdout, crashed.stderr)
    await asyncio.to_thread(wait_for_port, port)
    (orphan,) = listeners(port)
    processes.track(orphan)
    assert orphan != old_pid

    result = await restart(deps, supervisor, request)

    assert result.ok and not result.replayed
    assert result.data["new_pid"] == orphan == demo_service.pid()
    assert listeners(port) == {orphan} and demos_on(port) == [orphan]
    assert "Address already in use" not in log_file.read_text()
    progress = json.loads(deps.ledger.begin(
        f"{INFO['workflow_id']}/{INFO['workflow_run_id']}/{INFO['activity_id']}",
        workflow_id=INFO["workflow_id"], service="svc", activity="restart_process").progress_json)
    assert (progress["old_pid"], progress["new_pid"]) == (old_pid, orphan)


@pytest.mark.parametrize("probe", ["http", "tcp"])
async def test_restart_whose_new_process_cannot_bind_is_not_ready(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes, probe: str
) -> None:
    """Another process holds the port and answers the probe; the new one dies of EADDRINUSE."""
    port = processes.port(free_port())
    other = subprocess.Popen(demo_argv(port), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    processes.track(other.pid)
    await asyncio.to_thread(wait_for_port, port)
    log_file = tmp_path / "svc.log"

    error = await refused(deps, supervisor, restart_request(port, tmp_path / "svc.pid", log_file, probe))

    assert error.type == "ProcessExited" and not error.non_retryable
    assert f"127.0.0.1:{port} is held by another process" in str(error)
    assert other.poll() is None and listeners(port) == {other.pid}
    assert "Address already in use" in log_file.read_text()


# ----- abort: a restart that stopped the service starts it again ---------------------------

STUBBORN = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
time.sleep(600)
"""
"""A service that ignores SIGTERM, so its restart has to wait out the grace period and KILL it."""


async def test_abort_while_the_old_process_is_stopping_still_starts_the_service(
    tmp_path: Path, deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    """The abort arrives after TERM was sent, while the restart waits out the grace period: the
    restart KILLs the old process, starts the new one and records it, and only then ends
    cancelled, instead of leaving the service stopped with nothing to start it again."""
    port = free_port()
    argv = [sys.executable, "-c", STUBBORN, str(port)]
    old = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    processes.track(old.pid)
    await asyncio.to_thread(wait_for_port, port)
    pid_file = tmp_path / "svc.pid"
    pid_file.write_text(f"{old.pid}\n")
    request = ActionRequest.model_validate({
        "workflow_id": INFO["workflow_id"], "service": "svc", "action_name": "restart", "reason": "test",
        "spec": {"kind": "restart_process", "argv": argv, "pid_file": str(pid_file),
                 "log_file": str(tmp_path / "svc.log"), "grace": "1s",
                 "ready_probe": {"kind": "tcp", "port": port}, "ready_timeout": "30s"},
    })
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="restart_process", workflow_id=INFO["workflow_id"],
                                   workflow_run_id=INFO["workflow_run_id"], activity_id=INFO["activity_id"])

    def heartbeat(*details: Any) -> None:
        if details and isinstance(details[0], dict) and "stopping" in details[0]:
            env.cancel()  # the operator aborts while the old process ignores its TERM

    env.on_heartbeat = heartbeat
    with pytest.raises(asyncio.CancelledError):
        await env.run(ProcessActivities(deps, supervisor).restart_process, request)

    assert old.wait(timeout=10) == -signal.SIGKILL
    progress = json.loads(deps.ledger.begin(
        f"{INFO['workflow_id']}/{INFO['workflow_run_id']}/{INFO['activity_id']}",
        workflow_id=INFO["workflow_id"], service="svc", activity="restart_process").progress_json)
    new_pid = progress["new_pid"]
    new = processes.track(new_pid)
    assert progress["old_pid"] == old.pid != new_pid
    assert new.cmdline() == argv and pid_file.read_text().strip() == str(new_pid)
    await asyncio.to_thread(wait_for_port, port)
    assert listeners(port) == {new_pid}


# ----- process pools -------------------------------------------------------------------------

def pool_spec(base: int, replicas: int) -> dict[str, Any]:
    """A pool of demo services from port base."""
    return {"kind": "scale_pool", "argv": [sys.executable, "-m", "demo.service", "--port", "{port}"],
            "base_port": base, "max_replicas": 2, "replicas": replicas, "grace": "2s"}


async def scale_pool(deps: ActivityDeps, supervisor: ProcessSupervisor, spec: dict[str, Any],
                     step: str) -> ActionResult:
    """Run scale_process_pool as step `step`."""
    request = ActionRequest.model_validate({"workflow_id": "recovery:svc:t", "service": "svc",
                                            "action_name": "scale", "spec": spec, "reason": "test"})
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=step, workflow_id="recovery:svc:t",
                                   activity_type="scale_process_pool")
    scale = ScaleActivities(deps, ProcessPool(deps.state_dir, supervisor))
    result: ActionResult = await env.run(scale.scale_process_pool, request)
    return result


def free_pair() -> int:
    """A port whose successor is free too."""
    while True:
        base = free_port()
        if base < 65534 and not listeners(base + 1):
            return base


async def test_pool_scale_down_leaves_a_decoy_in_a_replica_pid_file_alone(
    deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    base = free_pair()
    processes.port(base)
    processes.port(base + 1)
    pool_dir = deps.state_dir / "pools" / "svc"
    pool_dir.mkdir(parents=True)
    decoy = sleeper(processes)
    (pool_dir / f"{base}.pid").write_text(f"{decoy.pid}\n")

    down = await scale_pool(deps, supervisor, pool_spec(base, 0), "1")
    up = await scale_pool(deps, supervisor, pool_spec(base, 1), "2")
    replica = read_identity(pool_dir / f"{base}.pid")
    cleanup = await scale_pool(deps, supervisor, pool_spec(base, 0), "3")

    assert decoy.poll() is None, "the decoy was signalled"
    assert (down.data["previous_replicas"], up.data["previous_replicas"]) == (0, 0)
    assert replica is not None and replica.cmdline == tuple(demo_argv(base))
    assert cleanup.data["previous_replicas"] == 1 and not listeners(base)
    assert sorted(p.name for p in pool_dir.iterdir() if not p.name.endswith(".log")) == []


async def test_pool_pid_file_naming_the_worker_is_refused(
    deps: ActivityDeps, supervisor: ProcessSupervisor, processes: Processes
) -> None:
    base = free_pair()
    pool_dir = deps.state_dir / "pools" / "svc"
    pool_dir.mkdir(parents=True)
    (pool_dir / f"{base + 1}.pid").write_text(f"{os.getpid()}\n")
    with pytest.raises(ApplicationError) as caught:
        await scale_pool(deps, supervisor, pool_spec(base, 0), "1")
    assert (caught.value.type, caught.value.non_retryable) == ("UnsafeProcess", True)


@pytest.mark.skipif(not CAN_REUSE_PIDS,
                    reason="needs root and ns_last_pid, to make the kernel reuse a pid at once")
def test_a_signal_to_a_checked_process_never_reaches_the_next_owner_of_its_pid() -> None:
    """Between medkit's check of a process and its signal, the process may end and the kernel
    hand its pid to another, which kill(pid) would then hit. The process is pinned (a pidfd)
    before the check, so the signal fails instead, and the pid's new owner keeps running."""
    checked = subprocess.Popen(["sleep", "300"])
    other: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(checked.pid).cmdline() != ["sleep", "300"]:  # not exec'd yet
            assert time.monotonic() < deadline, "sleep did not start"
            time.sleep(0.01)
        with PinnedProcess(checked.pid) as pinned:
            assert pinned.proc.cmdline() == ["sleep", "300"]  # the check
            checked.kill()
            checked.wait()
            other = new_group_with_pid(checked.pid)
            if other is None:
                pytest.skip(f"could not get pid {checked.pid} reused")
            with pytest.raises(psutil.NoSuchProcess):
                pinned.send(signal.SIGTERM)
        assert other.poll() is None, "the signal reached the process that took the pid"
    finally:
        if other is not None:
            other.kill()
            other.wait()


def test_pinning_a_pid_no_process_holds_is_no_such_process() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    with pytest.raises(psutil.NoSuchProcess):
        PinnedProcess(ended.pid)
