"""A local pool of identical processes, one per port, each with a pid file under the state dir."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.probes import read_pid
from activities.process import ProcessSupervisor
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

    def running(self, service: str, spec: ProcessPoolScaleAction) -> dict[int, int]:
        """Port → pid of every live replica; stale pid files are removed."""
        live: dict[int, int] = {}
        for port in self.ports(spec):
            pid_file = self.directory(service, spec) / f"{port}.pid"
            pid = read_pid(str(pid_file))
            if pid is not None and self._supervisor.alive(pid):
                live[port] = pid
            else:
                pid_file.unlink(missing_ok=True)
        return live

    def _start(self, service: str, spec: ProcessPoolScaleAction, port: int) -> int:
        directory = self.directory(service, spec)
        replica = RestartProcessAction(
            argv=[arg.replace("{port}", str(port)) for arg in spec.argv],
            pid_file=str(directory / f"{port}.pid"), log_file=str(directory / f"{port}.log"),
            cwd=spec.cwd, env=spec.env, inherit_env=spec.inherit_env,
        )
        return self._supervisor.spawn(f"{service}-{port}", replica)

    async def _wait_ready(self, spec: ProcessPoolScaleAction, started: dict[int, int]) -> None:
        deadline = time.monotonic() + spec.ready_timeout.total_seconds()
        waiting = dict(started)
        while waiting:
            for port, pid in list(waiting.items()):
                if not self._supervisor.alive(pid):
                    raise ApplicationError(f"replica on port {port} (pid {pid}) exited while starting",
                                           type="ProcessExited")
                if await accepts(spec.host, port):
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
            await asyncio.gather(*(self._supervisor.stop(live[port], spec.grace.total_seconds())
                                   for port in surplus))
            for port in surplus:
                (self.directory(service, spec) / f"{port}.pid").unlink(missing_ok=True)
            return f"stopped replicas on ports {surplus}"
        if len(live) == replicas:
            return f"already {replicas} replicas"
        started: dict[int, int] = {}
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
