"""A local pool of identical processes, one per port, each with a pid file under the state dir.

A replica is stopped only while it is provably the process the pool started (its identity
record, or for a pid file written before there were records, its command line), as in restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.process import ProcessSupervisor
from activities.process_identity import ProcessIdentity, forget, held_by_another, read_identity, resolve
from models.actions import ProcessPoolScaleAction, RestartProcessAction


async def accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class ProcessPool:
    """Starts and stops the replicas of a pool; its pid files are the pool's only state."""

    def __init__(self, state_dir: Path, supervisor: ProcessSupervisor) -> None:
        self._state_dir = state_dir
        self._supervisor = supervisor

    def directory(self, service: str, spec: ProcessPoolScaleAction) -> Path:
        """Where the pool keeps its pid and log files."""
        return self._state_dir / "pools" / (spec.pool or service)

    def ports(self, spec: ProcessPoolScaleAction) -> range:
        """The ports the pool may use."""
        return range(spec.base_port, spec.base_port + spec.max_replicas)

    def running(self, service: str, spec: ProcessPoolScaleAction) -> dict[int, ProcessIdentity]:
        """Port → identity of every live replica; pid files naming no replica are removed.

        A pid file naming a process that is not the replica (a reused pid, something else) is
        dropped and that process left alone; init, the worker and its ancestors raise
        UnsafeProcess, and another user's process running the replica's argv AccessDenied.
        """
        live: dict[int, ProcessIdentity] = {}
        self._supervisor.reap()
        for port in self.ports(spec):
            pid_file = self.directory(service, spec) / f"{port}.pid"
            target = resolve(pid_file, _replica_argv(spec, port))
            if target.identity is not None:
                live[port] = target.identity
            else:
                forget(pid_file)
        return live

    def _start(self, service: str, spec: ProcessPoolScaleAction, port: int) -> ProcessIdentity:
        directory = self.directory(service, spec)
        replica = RestartProcessAction(
            argv=_replica_argv(spec, port),
            pid_file=str(directory / f"{port}.pid"), log_file=str(directory / f"{port}.log"),
            cwd=spec.cwd, env=spec.env, inherit_env=spec.inherit_env,
        )
        pid = self._supervisor.spawn(f"{service}-{port}", replica)
        identity = read_identity(replica.pid_file)
        if identity is None or identity.pid != pid:
            raise ApplicationError(f"replica on port {port} (pid {pid}) exited while starting",
                                   type="ProcessExited")
        return identity

    async def _wait_ready(self, spec: ProcessPoolScaleAction, started: dict[int, ProcessIdentity]) -> None:
        """Wait until every started replica accepts on its port and holds that port itself."""
        deadline = time.monotonic() + spec.ready_timeout.total_seconds()
        waiting = dict(started)
        while waiting:
            for port, identity in list(waiting.items()):
                if not self._supervisor.running(identity):
                    raise ApplicationError(
                        f"replica on port {port} (pid {identity.pid}) exited while starting",
                        type="ProcessExited")
                if (await accepts(spec.host, port) and not held_by_another(identity.pid, spec.host, port)
                        and self._supervisor.running(identity)):
                    del waiting[port]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ApplicationError(f"replicas on ports {sorted(waiting)} not accepting after "
                                       f"{spec.ready_timeout.total_seconds():.0f}s", type="NotReady")
            activity.heartbeat({"waiting_ports": sorted(waiting)})
            await asyncio.sleep(0.1)

    async def scale(self, service: str, spec: ProcessPoolScaleAction, replicas: int) -> str:
        """Converge the pool on `replicas` live processes: stop the highest ports, start the lowest free."""
        live = self.running(service, spec)
        if len(live) > replicas:
            surplus = sorted(live)[replicas:]
            await asyncio.gather(*(self._supervisor.stop(live[port].pid, spec.grace.total_seconds(),
                                                         identity=live[port])
                                   for port in surplus))
            for port in surplus:
                forget(self.directory(service, spec) / f"{port}.pid")
            return f"stopped replicas on ports {surplus}"
        if len(live) == replicas:
            return f"already {replicas} replicas"
        started: dict[int, ProcessIdentity] = {}
        for port in self.ports(spec):
            if len(live) + len(started) == replicas:
                break
            if port in live or await accepts(spec.host, port):
                continue
            started[port] = self._start(service, spec, port)
        if len(live) + len(started) < replicas:
            raise ApplicationError(
                f"only {len(live) + len(started)} of {replicas} replicas fit: ports "
                f"{spec.base_port}-{spec.base_port + spec.max_replicas - 1} are taken",
                type="PoolPortsExhausted", non_retryable=True,
            )
        await self._wait_ready(spec, started)
        return f"started replicas on ports {sorted(started)}"


def _replica_argv(spec: ProcessPoolScaleAction, port: int) -> list[str]:
    """The pool's argv for the replica on port."""
    return [arg.replace("{port}", str(port)) for arg in spec.argv]
