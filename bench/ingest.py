"""Ingest benchmark: Alertmanager alerts through `medkit serve` vs raw signal-with-start.

10,000 alerts over 100 services go to a real dev server with a worker, twice: once as raw
`start_or_join_recovery` calls from this process's client, once as Alertmanager webhook
batches POSTed concurrently to a `medkit serve` subprocess. Reports alerts/s of both and
their ratio (goal >= 0.9), the recoveries each path started (must be exactly 100: every
further alert joins), the reports the recoveries counted (must be every alert: the gateway
coalesces the reports for one recovery that arrive while a call to it is in flight, but each
still counts), and p50/p99 latency. Recoveries are dry-run and park on a one-hour wait step,
so every alert after the first per service is a join; all are terminated at the end.

    .venv/bin/python bench/ingest.py [--alerts 10000] [--services 100] [--batch 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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
import yaml
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from gateway.alertmanager import AlertmanagerAlert
from gateway.mapping import alert_to_detection
from models import search_attributes as sa
from models.policy import PolicyFile
from workers.client import start_or_join_recovery
from workers.logging import configure_logging
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

BIN = Path(sys.executable).parent
TOKEN = "bench-detector-token-0123456789"


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy(services: int, health_url: str) -> dict[str, Any]:
    """Cheap recoveries: one HTTP probe of an always-healthy endpoint, then a one-hour wait."""
    rung = [{"name": "park", "steps": [{"wait": "1h"}]}]
    return {"version": 1, "services": [{
        "name": f"svc-{i:03d}", "dry_run": True,
        "probes": [{"kind": "http", "name": "up", "url": health_url, "timeout": "2s"}],
        "ladders": {"minor": rung, "major": rung, "critical": rung},
        "health_poll": {"enabled": False},
    } for i in range(services)]}


def alerts(total: int, services: int, alertname: str) -> list[dict[str, Any]]:
    """`total` distinct firing alerts, spread round-robin over the services."""
    return [{
        "status": "firing",
        "labels": {"alertname": alertname, "service": f"svc-{i % services:03d}",
                   "instance": f"host-{i}", "severity": "warning"},
        "annotations": {"summary": f"alert {i}"},
        "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"{i:016x}",
    } for i in range(total)]


def notification(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """A version-4 webhook payload."""
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "medkit", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": batch}


async def run_all(jobs: list[Callable[[], Awaitable[None]]], concurrency: int, label: str,
                  per_job: int) -> tuple[float, list[float]]:
    """Run the jobs `concurrency` at a time; elapsed seconds and each job's latency."""
    queue = list(reversed(jobs))
    latencies: list[float] = []
    done = 0
    step = max(1, len(jobs) // 10)

    async def lane() -> None:
        nonlocal done
        while queue:
            job = queue.pop()
            start = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - start)
            done += 1
            if done % step == 0:
                print(f"  {label}: {done * per_job}/{len(jobs) * per_job} alerts", flush=True)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def p(values: list[float], q: float) -> float:
    """A percentile in milliseconds."""
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else values[0] * 1000


async def count(client: Client, task_queue: str) -> int:
    """Executions ever started on a task queue (visibility is eventually consistent: poll)."""
    last = -1
    for _ in range(50):
        value = (await client.count_workflows(f"TaskQueue = '{task_queue}'")).count
        if value == last:
            return value
        last = value
        await asyncio.sleep(0.3)
    return last


async def drain(client: Client, alertname: str, services: int, per_service: int) -> int:
    """Wait until the worker has applied every report, so one phase's backlog never slows the
    next; the number of reports the recoveries counted (every alert must be one)."""
    deadline = time.monotonic() + 300
    applied = 0
    while time.monotonic() < deadline:
        statuses = await asyncio.gather(*(
            client.get_workflow_handle_for(RecoveryWorkflow.run, f"recovery:svc-{i:03d}:{alertname}")
            .query(RecoveryWorkflow.status) for i in range(services)), return_exceptions=True)
        # A query times out while its workflow's backlog is long: that recovery is not drained yet.
        applied = sum(s.reports for s in statuses if not isinstance(s, BaseException))
        print(f"  worker applied {applied}/{services * per_service} reports", flush=True)
        if applied >= services * per_service:
            return applied
        await asyncio.sleep(2)
    return applied


async def terminate_all(client: Client, task_queue: str) -> None:
    """Terminate every running recovery the benchmark started."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    async for execution in client.list_workflows(query):
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(execution.id).terminate("benchmark done")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Block until the gateway answers /readyz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("medkit serve exited during start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError("medkit serve did not become ready")


async def main(args: argparse.Namespace) -> None:
    """Start everything, run both phases, print the comparison."""
    print("starting the Temporal dev server", flush=True)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"), data_converter=pydantic_data_converter,
        search_attributes=sa.ALL, ui=False)
    client = env.client
    address = client.service_client.config.target_host
    work = Path(tempfile.mkdtemp(prefix="medkit-bench-"))
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    policy_data = policy(args.services, f"{gateway_url}/healthz")
    policy_file = work / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_data))
    services = {s.name: s for s in PolicyFile.model_validate(policy_data).services}
    log = (work / "gateway.log").open("ab")
    gateway = subprocess.Popen(
        [str(BIN / "medkit"), "serve", "--port", str(port), "--config", str(policy_file),
         "--address", address, "--task-queue", "bench-gateway", "--log-level", "WARNING"],
        env={**os.environ, "MEDKIT_DETECTOR_TOKEN": TOKEN, "MEDKIT_OPERATOR_TOKEN": TOKEN[::-1]},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(gateway_url, gateway)
        deps = ActivityDeps.create(work / "state")
        own = PolicyFile.model_validate(policy_data)  # the workers' own file, as the gateway's
        async with build_worker(client, "bench-raw", deps, own), \
                build_worker(client, "bench-gateway", deps, own):
            raw_alerts = [AlertmanagerAlert.model_validate(a)
                          for a in alerts(args.alerts, args.services, "RawAlert")]
            detections = [alert_to_detection(a, a.labels["service"]) for a in raw_alerts]

            def raw_job(index: int) -> Callable[[], Awaitable[None]]:
                detection = detections[index]

                async def job() -> None:
                    await start_or_join_recovery(client, detection, services[detection.service],
                                                 "bench-raw", dry_run=True)
                return job

            print(f"raw: {args.alerts} signal-with-starts, {args.concurrency} in flight", flush=True)
            raw_time, raw_lat = await run_all([raw_job(i) for i in range(len(detections))],
                                              args.concurrency, "raw", 1)
            raw_counted = await drain(client, "RawAlert", args.services, args.alerts // args.services)

            payloads = alerts(args.alerts, args.services, "GatewayAlert")
            batches = [notification(payloads[i:i + args.batch]) for i in range(0, len(payloads), args.batch)]
            lanes = args.posts_in_flight
            async with httpx.AsyncClient(base_url=gateway_url, timeout=120,
                                         headers={"Authorization": f"Bearer {TOKEN}"},
                                         limits=httpx.Limits(max_connections=lanes)) as http:
                def http_job(batch: dict[str, Any]) -> Callable[[], Awaitable[None]]:
                    async def job() -> None:
                        response = await http.post("/v1/alerts/alertmanager", json=batch)
                        response.raise_for_status()
                    return job

                print(f"gateway: {len(batches)} POSTs of {args.batch} alerts, {lanes} in flight", flush=True)
                gw_time, gw_lat = await run_all([http_job(b) for b in batches], lanes, "gateway", args.batch)
                metrics = (await http.get("/metrics")).text
            gw_counted = await drain(client, "GatewayAlert", args.services, args.alerts // args.services)
            started_metric = sum(float(line.split()[-1]) for line in metrics.splitlines()
                                 if line.startswith("medkit_gateway_recoveries_started_total{"))
            raw_started = await count(client, "bench-raw")
            gw_started = await count(client, "bench-gateway")
            raw_rate, gw_rate = args.alerts / raw_time, args.alerts / gw_time
            print("\nresults")
            print(f"  raw signal-with-start : {raw_rate:8.0f} alerts/s  p50 {p(raw_lat, 50):6.1f} ms  "
                  f"p99 {p(raw_lat, 99):6.1f} ms per call   recoveries started {raw_started}")
            print(f"  through medkit serve  : {gw_rate:8.0f} alerts/s  p50 {p(gw_lat, 50):6.1f} ms  "
                  f"p99 {p(gw_lat, 99):6.1f} ms per POST of {args.batch}   recoveries started "
                  f"{gw_started} (gateway metric {started_metric:g})")
            print(f"  ratio gateway/raw     : {gw_rate / raw_rate:.2f} (goal >= 0.90)")
            print(f"  reports counted by the recoveries: raw {raw_counted}, gateway {gw_counted} "
                  f"(of {args.alerts} alerts each)")
            ok = gw_started == raw_started == started_metric == args.services
            print(f"  exactly {args.services} recoveries per path: {'yes' if ok else 'NO'}")
            ok = ok and raw_counted == gw_counted == args.alerts
            print("terminating the benchmark's recoveries", flush=True)
            await terminate_all(client, "bench-raw")
            await terminate_all(client, "bench-gateway")
        await deps.http.aclose()
        if not ok:
            sys.exit(1)
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="alerts per webhook POST")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="raw signal-with-starts in flight (the gateway's own cap is also 100)")
    parser.add_argument("--posts-in-flight", type=int, default=8,
                        help="concurrent webhook POSTs, as several alert groups flush at once")
    configure_logging("WARNING")
    asyncio.run(main(parser.parse_args()))
