"""Added latency of each actuator over the raw operation it wraps, measured in the same run.

Each pair runs the activity (ledger write, validation, error mapping; no Temporal server,
through ActivityEnvironment) and the bare operation against the same local target:
breaker toggle vs a bare httpx POST to the demo service; Kubernetes rollout restart vs a
bare httpx PATCH to the local API-contract server; Docker restart vs a bare httpx POST on
the unix socket; restart_process vs a bare Popen + TERM + wait-for-port of the same argv.
Prints p50/p95 in milliseconds and the p50 ratio. Never asserts timings.

    .venv/bin/python -m bench.actions [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.testing import ActivityEnvironment

from activities.breaker import BreakerActivities
from activities.deps import ActivityDeps
from activities.docker import DockerActivities
from activities.kubernetes import KubernetesActivities
from activities.process import ProcessActivities, ProcessSupervisor
from models.actions import ActionRequest
from tests.conftest import free_port, wait_for_port
from tests.test_actuators_servers import TOKEN, DockerEngine, KubeApiServer, serving

Timed = Callable[[int], Awaitable[Any]]


async def measure(fn: Timed, rounds: int) -> list[float]:
    """Milliseconds per call of fn(i), after one warm-up call."""
    await fn(-1)
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p95(samples: list[float]) -> float:
    """The 95th percentile."""
    return statistics.quantiles(samples, n=20)[-1] if len(samples) > 1 else samples[0]


def report(name: str, activity: list[float], bare: list[float]) -> None:
    """One line: both p50/p95 and the p50 ratio."""
    a50, b50 = statistics.median(activity), statistics.median(bare)
    print(f"{name:<22} activity p50 {a50:8.2f} p95 {p95(activity):8.2f} | bare p50 {b50:8.2f} "
          f"p95 {p95(bare):8.2f} | ratio {a50 / b50:5.2f}x  (+{a50 - b50:.2f} ms)")


def request(spec: dict[str, Any]) -> ActionRequest:
    """An action request for the bench service."""
    return ActionRequest.model_validate({"workflow_id": "bench", "service": "bench",
                                         "action_name": "bench", "spec": spec, "reason": "bench"})


async def in_activity(fn: Any, req: ActionRequest, step: int, kind: str) -> Any:
    """Run an activity as a fresh step (so the ledger does real work, not a replay)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=f"{kind}-{step}", activity_type=kind)
    return await env.run(fn, req)


async def bench_breaker(deps: ActivityDeps, rounds: int, tmp: Path) -> None:
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "demo.service", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/admin/breaker"
        req = request({"kind": "breaker", "url": url, "state": "open"})
        acts = BreakerActivities(deps)
        activity = await measure(lambda i: in_activity(acts.set_breaker, req, i, "set_breaker"), rounds)
        bare = await measure(lambda i: deps.http.post(url, json={"state": "open"}), rounds)
        report("breaker toggle", activity, bare)
    finally:
        demo.terminate()
        demo.wait()


async def bench_kubernetes(deps: ActivityDeps, rounds: int, tmp: Path) -> None:
    api = KubeApiServer(port=free_port())
    api.add("prod", "deployment", "web")
    req = request({"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(api.kubeconfig(tmp))})
    path = f"{api.server}/apis/apps/v1/namespaces/prod/deployments/web"
    headers = {"Authorization": f"Bearer {TOKEN}",
               "Content-Type": "application/strategic-merge-patch+json"}
    acts = KubernetesActivities(deps)

    async def bare(i: int) -> None:
        body = ('{"spec":{"template":{"metadata":{"annotations":'
                f'{{"kubectl.kubernetes.io/restartedAt":"bare-{i}"}}}}}}}}}}')
        async with httpx.AsyncClient() as client:
            (await client.patch(path, content=body, headers=headers)).raise_for_status()

    with serving(api):
        activity = await measure(
            lambda i: in_activity(acts.restart_kubernetes, req, i, "restart_kubernetes"), rounds)
        report("k8s rollout PATCH", activity, await measure(bare, rounds))


async def bench_docker(deps: ActivityDeps, rounds: int, tmp: Path) -> None:
    engine = DockerEngine(socket=tmp / "docker.sock")
    engine.add("web")
    req = request({"kind": "docker", "container": "web", "socket": str(engine.socket)})
    acts = DockerActivities(deps)

    async def bare(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(engine.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://docker") as client:
            (await client.post("/containers/web/restart", params={"t": 10})).raise_for_status()

    with serving(engine):
        activity = await measure(lambda i: in_activity(acts.restart_docker, req, i, "restart_docker"),
                                 rounds)
        report("docker restart", activity, await measure(bare, rounds))


async def bench_process(deps: ActivityDeps, rounds: int, tmp: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "demo.service", "--port", str(port)]
    pid_file = tmp / "bench.pid"
    supervisor = ProcessSupervisor(deps.state_dir)
    acts = ProcessActivities(deps, supervisor)
    req = request({"kind": "restart_process", "argv": argv, "pid_file": str(pid_file), "grace": "5s",
                   "ready_probe": {"kind": "tcp", "port": port}})
    activity = await measure(lambda i: in_activity(acts.restart_process, req, i, "restart_process"),
                             rounds)
    last = psutil.Process(int(pid_file.read_text()))
    last.terminate()
    last.wait(5)
    supervisor.reap()
    current: list[subprocess.Popen[bytes]] = []

    async def bare(i: int) -> None:
        if current:
            current[0].terminate()
            current.pop().wait()
        current.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            await asyncio.sleep(0.005)

    try:
        report("process restart", activity, await measure(bare, rounds))
    finally:
        for proc in current:
            proc.terminate()
            proc.wait()


async def main(rounds: int) -> None:
    """Run every pair and print one line each."""
    print(f"added latency per action, {rounds} rounds each (ms; restart: {max(3, rounds // 5)} rounds)")
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        deps = ActivityDeps.create(tmp / "state")
        try:
            await bench_breaker(deps, rounds, tmp)
            await bench_kubernetes(deps, rounds, tmp)
            await bench_docker(deps, rounds, tmp)
            await bench_process(deps, max(3, rounds // 5), tmp)
        finally:
            await deps.http.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40)
    asyncio.run(main(parser.parse_args().rounds))
