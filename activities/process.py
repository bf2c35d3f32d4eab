"""Restart of a supervised local process: stop it (TERM, then KILL), start its argv, wait until up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.child_env import child_environment
from activities.deps import ActivityDeps
from activities.idempotency import begin_action, replayed_result, step_key, wrong_kind
from activities.probes import check_http, check_tcp, process_alive, read_pid
from models.actions import ActionRequest, ActionResult, RestartProcessAction
from models.probes import HttpProbe


class ProcessSupervisor:
    """Starts and stops local processes and reaps the ones it started, so none linger as zombies."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, service: str, spec: RestartProcessAction) -> int:
        """Start argv in its own session, record its pid in the pid file and return the pid."""
        log_path = Path(spec.log_file) if spec.log_file else self._state_dir / f"{service}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    spec.argv, cwd=spec.cwd, env=child_environment(spec.env, spec.inherit_env),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
            raise ApplicationError(
                f"cannot start {spec.argv[0]!r}: {err}", type="CommandNotFound", non_retryable=True
            ) from err
        self._children[child.pid] = child
        pid_file = Path(spec.pid_file)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{child.pid}\n")
        return child.pid

    def reap(self) -> None:
        """Collect the exit status of children that have ended."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def alive(self, pid: int | None) -> bool:
        """Whether pid runs (reaping first, so a dead child of ours does not look alive)."""
        self.reap()
        return process_alive(pid)

    async def stop(self, pid: int, grace: float, heartbeat: Callable[[], None] = lambda: None) -> str:
        """TERM the process, KILL it if it outlives the grace period; say which it took.

        `heartbeat` is called while waiting (activities pass their heartbeat).
        """
        try:
            proc = psutil.Process(pid)
            proc.terminate()
        except psutil.NoSuchProcess:
            return "already stopped"
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.alive(pid):
                return "stopped by SIGTERM"
            heartbeat()
            await asyncio.sleep(0.05)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            return "stopped by SIGTERM"
        while self.alive(pid):
            await asyncio.sleep(0.05)
        return f"killed after {grace:.1f}s grace"


class ProcessActivities:
    """The local-process action activities."""

    def __init__(self, deps: ActivityDeps, supervisor: ProcessSupervisor) -> None:
        self._deps = deps
        self._supervisor = supervisor

    async def _wait_ready(self, spec: RestartProcessAction, pid: int) -> None:
        deadline = time.monotonic() + spec.ready_timeout.total_seconds()
        while True:
            if not self._supervisor.alive(pid):
                raise ApplicationError(
                    f"{spec.argv[0]} (pid {pid}) exited while starting", type="ProcessExited"
                )
            if spec.ready_probe is None:
                return
            if isinstance(spec.ready_probe, HttpProbe):
                probe = await check_http(self._deps.http, spec.ready_probe)
            else:
                probe = await check_tcp(spec.ready_probe)
            if probe.healthy:
                return
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"pid {pid} not ready after {spec.ready_timeout.total_seconds():.0f}s: "
                    f"{probe.detail}", type="NotReady",
                )
            activity.heartbeat({"waiting_ready": pid})
            await asyncio.sleep(0.1)

    @activity.defn(name="restart_process")
    async def restart_process(self, request: ActionRequest) -> ActionResult:
        """Restart the service's process exactly once for this step, however often retried."""
        spec = request.spec
        if not isinstance(spec, RestartProcessAction):
            raise wrong_kind(request, "restart_process")
        old_pid = read_pid(spec.pid_file)
        if request.dry_run:
            return ActionResult(
                action_name=request.action_name, kind=spec.kind, ok=True, simulated=True,
                detail=f"dry-run: would stop pid {old_pid} (TERM, KILL after "
                       f"{spec.grace.total_seconds():.0f}s) and start {spec.argv}",
                data={"old_pid": old_pid},
            )
        ledger = self._deps.ledger
        record = begin_action(ledger, request)
        if (done := replayed_result(record)) is not None:
            return done
        key = step_key()
        progress = json.loads(record.progress_json)
        old_pid = progress.get("old_pid", old_pid)
        new_pid: int | None = progress.get("new_pid")
        started = time.monotonic()
        how = "resumed a restart already under way"
        if new_pid is None or not self._supervisor.alive(new_pid):
            ledger.progress(key, old_pid=old_pid)
            how = "was not running"
            if old_pid is not None and self._supervisor.alive(old_pid):
                how = await self._supervisor.stop(old_pid, spec.grace.total_seconds(),
                                                  lambda: activity.heartbeat({"stopping": old_pid}))
            new_pid = self._supervisor.spawn(request.service, spec)
            ledger.progress(key, new_pid=new_pid)
        await self._wait_ready(spec, new_pid)
        result = ActionResult(
            action_name=request.action_name, kind=spec.kind, ok=True,
            detail=f"pid {old_pid} {how}; started pid {new_pid}",
            data={"old_pid": old_pid, "new_pid": new_pid,
                  "restart_seconds": round(time.monotonic() - started, 3)},
        )
        ledger.finish(key, result.model_dump_json())
        return result
