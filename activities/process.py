"""Restart of a supervised local process: stop it (TERM, then KILL), start its argv, wait until up.

Only a process proven to be the service is ever signalled (see activities/process_identity.py),
and a worker dying at any point of a restart never leaves two copies of the service: the intent
to start is recorded before starting, and a retry adopts what the crashed attempt started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.child_env import child_environment, unrunnable
from activities.deps import ActivityDeps
from activities.heartbeat import uninterrupted
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from activities.probes import check_http, check_tcp, process_alive
from activities.process_identity import (
    ProcessIdentity,
    Target,
    access_denied,
    held_by_another,
    identity_file,
    identity_of_new,
    listening,
    read_identity,
    record_identity,
    refuse_unsafe,
    resolve,
    resolve_pid,
    started_after,
    still_running,
    write_atomic,
)
from activities.process_signal import PinnedProcess
from models.actions import ActionRequest, ActionResult, RestartProcessAction
from models.probes import HttpProbe


class ProcessSupervisor:
    """Starts and stops local processes and reaps the ones it started, so none linger as zombies."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, service: str, spec: RestartProcessAction, token: str | None = None) -> int:
        """Start argv in its own session, record its identity and pid (record_identity), return the pid.

        `token` goes into the identity record, tying the process to the ledger intent that started
        it, so a retry after a crash can tell it apart from anything else running argv.
        """
        log_path = Path(spec.log_file) if spec.log_file else self._state_dir / f"{service}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    spec.argv, cwd=spec.cwd, env=child_environment(spec.env, spec.inherit_env),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            if not unrunnable(err):
                raise
            raise ApplicationError(
                f"cannot start {spec.argv[0]!r}: {err}", type="CommandNotFound", non_retryable=True
            ) from err
        self._children[child.pid] = child
        try:
            identity = identity_of_new(psutil.Process(child.pid), spec.argv, token)
        except psutil.NoSuchProcess:  # exited at once: no identity to record; the caller sees it gone
            identity_file(spec.pid_file).unlink(missing_ok=True)
            write_atomic(Path(spec.pid_file), f"{child.pid}\n")
            return child.pid
        record_identity(spec.pid_file, identity)
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

    def running(self, identity: ProcessIdentity) -> bool:
        """Whether the process identity describes still runs (reaping first, as alive does)."""
        self.reap()
        return still_running(identity)

    def _unreaped_child(self, pid: int) -> bool:
        """Whether pid is a child this supervisor started and has not reaped: its pid cannot have
        been reused, so it is the very process started."""
        child = self._children.get(pid)
        return child is not None and child.poll() is None

    def _gone(self, proc: psutil.Process) -> bool:
        self.reap()
        try:
            return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    async def stop(self, pid: int, grace: float, heartbeat: Callable[[], None] = lambda: None,
                   identity: ProcessIdentity | None = None) -> str:
        """TERM the process, KILL it if it outlives the grace period; say which it took.

        Only a process proven to be the one meant is signalled: it must still match `identity`
        or, without one, be a child this supervisor started and has not reaped; anything else is
        left alone (and said so). Init, the worker and its ancestors raise UnsafeProcess, a
        process the worker may not signal AccessDenied (both non-retryable). `heartbeat` is
        called while waiting (activities pass their heartbeat).
        """
        refuse_unsafe(pid)
        if identity is None and not self._unreaped_child(pid):
            return "left alone: medkit has no record of starting it"
        try:
            pinned = PinnedProcess(pid)  # pinned before the check: see activities/process_signal
        except psutil.NoSuchProcess:
            return "already stopped"
        with pinned:
            proc = pinned.proc
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return "already stopped"
                if identity is not None and not identity.matches(proc):
                    return "left alone: it is no longer the process medkit started"
                pinned.send(signal.SIGTERM)
            except psutil.NoSuchProcess:
                return "already stopped"
            except psutil.AccessDenied as err:
                raise access_denied(pid, "signal", err) from err
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self._gone(proc):
                    return "stopped by SIGTERM"
                heartbeat()
                await asyncio.sleep(0.05)
            try:
                pinned.send(signal.SIGKILL)
            except psutil.NoSuchProcess:
                return "stopped by SIGTERM"
            except psutil.AccessDenied as err:
                raise access_denied(pid, "signal", err) from err
            while not self._gone(proc):
                heartbeat()
                await asyncio.sleep(0.05)
            return f"killed after {grace:.1f}s grace"


class ProcessActivities:
    """The local-process action activities."""

    def __init__(self, deps: ActivityDeps, supervisor: ProcessSupervisor) -> None:
        self._deps = deps
        self._supervisor = supervisor

    async def _wait_ready(self, spec: RestartProcessAction, identity: ProcessIdentity) -> None:
        """Wait until the ready probe passes, answered by the process this restart started.

        A passing probe alone proves nothing when another process holds the port (an orphan of a
        crashed attempt, any other listener): the new process dies of EADDRINUSE while the other
        one answers. So a local port must be held by the new pid or its children, and the pid
        must still run after the probe passed.
        """
        pid = identity.pid
        target = _probe_address(spec)
        deadline = time.monotonic() + spec.ready_timeout.total_seconds()
        while True:
            if not self._supervisor.running(identity):
                held = ""
                if target is not None and listening(*target):
                    held = f"; {target[0]}:{target[1]} is held by another process"
                raise ApplicationError(f"{spec.argv[0]} (pid {pid}) exited while starting{held}",
                                       type="ProcessExited")
            if spec.ready_probe is None:
                return
            if isinstance(spec.ready_probe, HttpProbe):
                probe = await check_http(self._deps.http, spec.ready_probe)
            else:
                probe = await check_tcp(spec.ready_probe)
            detail = probe.detail
            if probe.healthy:
                if target is not None and held_by_another(pid, *target):
                    detail = f"{target[0]}:{target[1]} answers, but another process than pid {pid} holds it"
                elif self._supervisor.running(identity):
                    return
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"pid {pid} not ready after {spec.ready_timeout.total_seconds():.0f}s: "
                    f"{detail}", type="NotReady",
                )
            activity.heartbeat({"waiting_ready": pid})
            await asyncio.sleep(0.1)

    async def _resume(self, step: ActionStep,
                      spec: RestartProcessAction) -> tuple[ProcessIdentity, str] | None:
        """The process an earlier attempt of this step started, if it still runs.

        Either the ledger names it (new_pid), or the attempt died after recording its intent
        and before recording the pid: then the process is found by the intent's token in the
        identity record, or, if the attempt died before writing even that, as the process
        running argv that started after the intent. It is adopted, never started twice.
        """
        new_pid = step.progress.get("new_pid")
        if isinstance(new_pid, int):
            target = resolve_pid(new_pid, spec.pid_file, spec.argv)
            if target.identity is None:
                return None
            return target.identity, "resumed a restart already under way"
        token, since = step.progress.get("spawn_token"), step.progress.get("spawn_intent_at")
        if not isinstance(token, str) or not isinstance(since, float | int):
            return None
        recorded = read_identity(spec.pid_file)
        if recorded is not None and recorded.spawn_token == token and self._supervisor.running(recorded):
            orphan = recorded
        else:
            found = started_after(spec.argv, float(since))
            if found is None:
                return None
            orphan = dataclasses.replace(found, spawn_token=token)
        refuse_unsafe(orphan.pid)
        record_identity(spec.pid_file, orphan)
        await step.record(new_pid=orphan.pid)
        return orphan, "adopted the process an interrupted attempt started"

    async def _replace(self, service: str, spec: RestartProcessAction, step: ActionStep,
                       current: Target) -> tuple[str, ProcessIdentity]:
        """Stop the service's process (if medkit can vouch for it) and start argv; say how it
        stopped and who was started.

        The caller runs this `uninterrupted`: once TERM is sent, an abort must not leave the
        service stopped with nothing to start it again, so a cancellation during the grace
        period lets the stop and the start finish (the new pid recorded in the ledger) and only
        then ends the step, without waiting for the ready probe.
        """
        how = current.reason
        if current.identity is not None:
            how = await self._supervisor.stop(
                current.identity.pid, spec.grace.total_seconds(),
                lambda: activity.heartbeat({"stopping": current.pid}), identity=current.identity)
        token = uuid.uuid4().hex
        await step.record(spawn_token=token, spawn_intent_at=time.time(), new_pid=None)
        new_pid = self._supervisor.spawn(service, spec, token)
        await step.record(new_pid=new_pid)
        recorded = read_identity(spec.pid_file)
        if recorded is None or recorded.pid != new_pid:
            raise ApplicationError(f"{spec.argv[0]} (pid {new_pid}) exited while starting",
                                   type="ProcessExited")
        return f"pid {current.pid} {how}", recorded

    @activity.defn(name="restart_process")
    async def restart_process(self, request: ActionRequest) -> ActionResult:
        """Restart the service's process exactly once for this step, however often retried.

        Only the process proven to be the service is stopped (process_identity.resolve). A pid
        file naming anything else (a reused pid, an unrelated process) is left alone and the
        service counts as not running under medkit, which then starts it: if the other process
        holds the service's port the new one cannot bind, the ready check fails and the recovery
        escalates to a person. Killing a process medkit cannot vouch for could take down
        something unrelated; a failed restart that asks for help cannot.
        """
        spec = action_spec(request, RestartProcessAction)

        def dry_run() -> DryRun:
            current = resolve(spec.pid_file, spec.argv)
            plan = (f"would stop pid {current.pid} (TERM, KILL after {spec.grace.total_seconds():.0f}s) "
                    f"and start" if current.identity is not None
                    else f"pid {current.pid} {current.reason}; would start")
            return DryRun(f"{plan} {spec.argv}", data={"old_pid": current.pid})

        async def perform(step: ActionStep) -> ActionResult:
            started = time.monotonic()
            resumed = await self._resume(step, spec)
            if resumed is not None:
                identity, how = resumed
                old_pid = step.progress.get("old_pid")
                stopped = f"pid {old_pid} stopped earlier; {how}"
            else:
                current = resolve(spec.pid_file, spec.argv)
                old_pid = step.progress.get("old_pid", current.pid)
                if "old_pid" not in step.progress:
                    await step.record(old_pid=old_pid)
                stopped, identity = await uninterrupted(
                    self._replace(request.service, spec, step, current))
            await self._wait_ready(spec, identity)
            return ActionResult(
                action_name=request.action_name, kind=spec.kind, ok=True,
                detail=f"{stopped}; started pid {identity.pid}",
                data={"old_pid": old_pid, "new_pid": identity.pid,
                      "restart_seconds": round(time.monotonic() - started, 3)},
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)


def _probe_address(spec: RestartProcessAction) -> tuple[str, int] | None:
    """The host and port the ready probe connects to, if it has one."""
    probe = spec.ready_probe
    if probe is None:
        return None
    if isinstance(probe, HttpProbe):
        url = httpx.URL(probe.url)
        return url.host, url.port or (443 if url.scheme == "https" else 80)
    return probe.host, probe.port
