"""The worker's /metrics and /healthz: real recoveries on a real worker, scraped over HTTP.

The recoveries run on the time-skipping server against a worker with its own policy file and its
own Temporal runtime (whose SDK metrics go to the worker's buffer); `medkit worker` itself runs
against the dev server to show the flag, the endpoint and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import MetricBuffer, Runtime
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.process import ProcessSupervisor
from activities.record import RecordActivities
from models.incident_record import IncidentRecord
from models.phases import DecisionKind, Outcome, Phase, Severity
from models.policy import ServicePolicy
from models.status import RecoveryStatus, TimelineEntry
from tests.conftest import eventually, free_port, policy_file, running, stop_fleet_coordinator
from tests.scripted import detection, start, wait_for_phase
from tests.test_policy_authority import PY, TOUCH, forged, ladders_of, own_service
from tests.test_recovery_paths import operator
from workers.client import send_decision
from workers.dev import run_worker_and_poller
from workers.metrics import MetricsAddress, WorkerMetrics, metrics_address, metrics_runtime
from workers.metrics_server import (
    MetricsAddressInUse,
    MetricsServer,
    WorkerHealth,
    serving,
    worker_endpoint,
)
from workers.worker import build_worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the exposition has no such sample."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> list[float]:
    """Values of the samples of `name` whose labels include these."""
    wanted = set(labels.items())
    return [v for (sample, have), v in samples.items() if sample == name and wanted <= have]


MEDKIT_FAMILIES = {"medkit_worker_recoveries_finished", "medkit_worker_recovery_duration_seconds",
                   "medkit_worker_actions", "medkit_worker_escalations", "medkit_worker_pending_decisions"}
"""The metric families every worker's endpoint serves from the start, before any recovery."""


async def exposition(port: int) -> str:
    """GET /metrics: the text exposition, checked to be served as Prometheus text."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def scrape(port: int) -> Samples:
    """GET /metrics and parse it."""
    return parse(await exposition(port))


async def scrape_families(port: int) -> set[str]:
    """GET /metrics: the names of the metric families it serves (with or without samples)."""
    return {family.name for family in text_string_to_metric_families(await exposition(port))}


async def health(port: int) -> tuple[int, dict[str, Any]]:
    """GET /healthz: the status code and the JSON facts."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    return response.status_code, response.json()


async def healthy_facts(port: int) -> dict[str, Any] | None:
    """/healthz's facts once it answers 200; None while the endpoint is not up or not healthy yet."""
    try:
        code, facts = await health(port)
    except httpx.TransportError:
        return None
    return facts if code == 200 else None


@asynccontextmanager
async def metered_client(
    env: WorkflowEnvironment,
) -> AsyncIterator[tuple[Client, MetricBuffer, Runtime]]:
    """A client on its own runtime whose SDK metrics go to a buffer, as `medkit worker` makes."""
    runtime, buffer = metrics_runtime()
    client = await Client.connect(env.client.service_client.config.target_host,
                                  namespace=env.client.namespace, runtime=runtime,
                                  data_converter=pydantic_data_converter)
    yield client, buffer, runtime


def gated(tmp_path: Path) -> ServicePolicy:
    """`gate`: its fix needs an approval that times out, escalating once per wait."""
    ladder = [{"name": "fix", "steps": [{"action": "fix", "requires_approval": True,
                                         "approval_timeout": "1m"}]}]
    return own_service(tmp_path, name="gate", ladders={"minor": ladder, "major": ladder,
                                                       "critical": ladder},
                       escalation={"after": "1m", "max_escalations": 1})


def broken(tmp_path: Path) -> ServicePolicy:
    """`broken`: its only action always exits 3."""
    return own_service(tmp_path, name="broken",
                       actions={"fix": {"kind": "command", "argv": [PY, "-c", "raise SystemExit(3)"]}})


async def resolve_all(env: WorkflowEnvironment, *handles: Any) -> list[RecoveryStatus]:
    """Resolve recoveries waiting in ManualIntervention, every decision before any result is
    awaited (awaiting one skips time, which must not find the others idle without a decision),
    and return their final statuses."""
    for handle in handles:
        await send_decision(env.client, handle.id, DecisionKind.RESOLVE, operator())
    results: list[RecoveryStatus] = [await handle.result() for handle in handles]
    assert [result.phase for result in results] == [Phase.RESOLVED] * len(handles)
    return results


async def test_real_recoveries_show_in_the_worker_s_metrics(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    for own in ("gate", "broken"):  # each service's probe looks at its own marker
        (tmp_path / own).mkdir()
    own = policy_file(own_service(tmp_path), gated(tmp_path / "gate"), broken(tmp_path / "broken"))
    # The snapshots are the worker file's own services: a file stamps its fleet size on each.
    svc, gate, bad = own.service("svc"), own.service("gate"), own.service("broken")
    async with metered_client(ts_env) as (client, buffer, _runtime):
        metrics = WorkerMetrics(deps.ledger.engine, buffer)
        worker = build_worker(client, queue, deps, own, metrics=metrics)
        async with serving(metrics, WorkerHealth(worker, client), "127.0.0.1", 0) as server, \
                running(worker):
            fixed = await start(ts_env.client, queue, svc, detection(service="svc"))
            assert (await fixed.result()).phase == Phase.RECOVERED

            evil = forged(svc, actions={**svc.model_dump(mode="json")["actions"],
                                        "pwn": {"kind": "command",
                                                "argv": [PY, "-c", TOUCH, str(tmp_path / "pwned")]}},
                          ladders=ladders_of("pwn"))
            refused = await start(ts_env.client, queue, evil, detection(service="svc"))
            await wait_for_phase(refused, Phase.MANUAL_INTERVENTION)

            failing = await start(ts_env.client, queue, bad, detection(service="broken"))
            await wait_for_phase(failing, Phase.MANUAL_INTERVENTION, skip_time=True)

            waiting = await start(ts_env.client, queue, gate,
                                  detection(service="gate", severity=Severity.CRITICAL))
            await wait_for_phase(waiting, Phase.AWAITING_APPROVAL)

            async def pending_now() -> Samples | None:
                samples = await scrape(server.port)
                gauge = "medkit_worker_pending_decisions"
                ready = (value(samples, gauge, service="gate", kind="approval") == 1
                         and value(samples, gauge, service="svc", kind="manual") == 1
                         and value(samples, gauge, service="broken", kind="manual") == 1)
                return samples if ready else None

            await eventually(pending_now)

            await wait_for_phase(waiting, Phase.MANUAL_INTERVENTION, skip_time=True)
            gate_result, _, _ = await resolve_all(ts_env, waiting, refused, failing)

            samples = await scrape(server.port)

    finished = "medkit_worker_recoveries_finished_total"
    assert value(samples, finished, service="svc", outcome="Recovered") == 1
    assert value(samples, finished, service="svc", outcome="Resolved") == 1
    assert value(samples, finished, service="broken", outcome="Resolved") == 1
    assert value(samples, finished, service="gate", outcome="Resolved") == 1
    duration = "medkit_worker_recovery_duration_seconds_count"
    assert value(samples, duration, service="svc", outcome="Recovered") == 1
    assert value(samples, duration, service="gate", outcome="Resolved") == 1

    actions = "medkit_worker_actions_total"
    assert value(samples, actions, service="svc", kind="command", result="succeeded") == 1
    assert value(samples, actions, service="svc", kind="command", result="refused") == 1
    assert value(samples, actions, service="broken", kind="command", result="failed") == 3  # attempts
    assert value(samples, actions, service="gate", kind="command", result="succeeded") == 0

    assert gate_result.escalations >= 1  # one in the approval wait, maybe one in manual
    assert value(samples, "medkit_worker_escalations_total", service="gate") == gate_result.escalations
    assert value(samples, "medkit_worker_escalations_total", service="svc") == 0
    assert matching(samples, "medkit_worker_pending_decisions") == []  # none waits any more

    completed = matching(samples, "temporal_workflow_completed_total", task_queue=queue,
                         workflow_type="RecoveryWorkflow")
    assert sum(completed) >= 4
    assert matching(samples, "temporal_activity_execution_latency_count", task_queue=queue,
                    activity_type="run_command")


async def test_a_retried_or_repeated_store_write_counts_once(deps: ActivityDeps, tmp_path: Path) -> None:
    """The store decides what is new: writing the same final record twice (a retry, or a second
    worker) counts one finished recovery, one time to recover and each escalation once."""
    started = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def entry(seconds: int, to: Phase, kind: str = "transition") -> TimelineEntry:
        return TimelineEntry.model_validate({
            "at": started.replace(second=seconds), "from": Phase.MANUAL_INTERVENTION, "to": to,
            "reason": "r", "actor": "medkit", "kind": kind})

    status = RecoveryStatus(
        workflow_id="recovery:svc:k", service="svc", incident_key="k", phase=Phase.RESOLVED,
        max_attempts=1, escalations=1, outcome=Outcome.RESOLVED, started_at=started,
        timeline=[entry(5, Phase.MANUAL_INTERVENTION, "escalation"), entry(30, Phase.RESOLVED)])
    record = IncidentRecord(run_id="run-1", status=status)
    store = RecordActivities(deps)
    metrics = WorkerMetrics(deps.ledger.engine)
    for _ in range(2):
        metrics.count_record(record, await store.record_incident(record))
    samples = parse(metrics.render().decode())
    assert value(samples, "medkit_worker_recoveries_finished_total", service="svc",
                 outcome="Resolved") == 1
    assert value(samples, "medkit_worker_recovery_duration_seconds_sum", service="svc",
                 outcome="Resolved") == 30
    assert value(samples, "medkit_worker_escalations_total", service="svc") == 1


async def test_healthz_follows_the_worker_from_start_to_shutdown(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    metrics = WorkerMetrics(deps.ledger.engine)
    worker: Worker = build_worker(ts_env.client, queue, deps, policy_file(own_service(tmp_path)),
                                  metrics=metrics)
    worker_health = WorkerHealth(worker, ts_env.client)
    server = MetricsServer(metrics, worker_health, "127.0.0.1", 0)
    await server.start()
    try:
        code, facts = await health(server.port)
        assert code == 503 and facts["worker_running"] is False  # not polling yet
        async with running(worker):
            # a loaded host can miss one 2 s connectivity check, so wait for the first 200
            facts = await eventually(lambda: healthy_facts(server.port), timeout=30)
            assert facts == {"status": "ok", "worker_running": True, "shutting_down": False,
                             "connected": True, "task_queue": queue,
                             "namespace": ts_env.client.namespace}
            worker_health.shutting_down = True  # what SIGTERM does before the drain
            code, facts = await health(server.port)
            assert code == 503 and facts["shutting_down"] is True
        code, facts = await health(server.port)
        assert code == 503 and facts["worker_running"] is False
    finally:
        await server.stop()


def test_the_metrics_address_comes_from_the_flag_then_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDKIT_METRICS_ADDRESS", raising=False)
    default = metrics_address(None)
    assert default is not None and (str(default), default.explicit) == ("127.0.0.1:9464", False)
    monkeypatch.setenv("MEDKIT_METRICS_ADDRESS", "0.0.0.0:9100")
    from_env = metrics_address(None)
    assert from_env is not None and (str(from_env), from_env.explicit) == ("0.0.0.0:9100", True)
    flag = metrics_address("127.0.0.1:0")
    assert flag is not None and (flag.port, flag.explicit) == (0, True)
    assert metrics_address("off") is None
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        metrics_address("9464")


async def test_medkit_worker_serves_metrics_and_exits_cleanly_on_sigterm(
    dev_env: WorkflowEnvironment, queue: str, tmp_path: Path,
) -> None:
    service = own_service(tmp_path).model_dump(mode="json", by_alias=True, exclude={"fleet"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"services": [service]}))
    port = free_port()
    argv = [str(Path(sys.executable).parent / "medkit"), "worker", "--config", str(policy),
            "--state-dir", str(tmp_path / "state"), "--task-queue", queue,
            "--address", dev_env.client.service_client.config.target_host,
            "--metrics-address", f"127.0.0.1:{port}"]
    worker = subprocess.Popen(argv, env={**os.environ}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        facts = await eventually(lambda: healthy_facts(port), timeout=60)
        assert facts["task_queue"] == queue and facts["connected"] is True

        async def polling() -> Samples | None:
            samples = await scrape(port)
            return samples if matching(samples, "temporal_num_pollers", task_queue=queue) else None

        samples = await eventually(polling, timeout=30)
        assert matching(samples, "temporal_worker_start_total", task_queue=queue) == [1.0]
        assert await scrape_families(port) >= MEDKIT_FAMILIES
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=60)
        assert worker.returncode == 0, stderr
        assert "shutting down" in stderr
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


async def test_a_bad_or_taken_metrics_address_is_a_one_line_error(
    dev_env: WorkflowEnvironment, queue: str, tmp_path: Path,
) -> None:
    service = own_service(tmp_path).model_dump(mode="json", by_alias=True, exclude={"fleet"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"services": [service]}))
    argv = [str(Path(sys.executable).parent / "medkit"), "worker", "--config", str(policy),
            "--state-dir", str(tmp_path / "state"), "--task-queue", queue,
            "--address", dev_env.client.service_client.config.target_host]
    bad = await asyncio.to_thread(subprocess.run, [*argv, "--metrics-address", "nonsense"],
                                  capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "medkit: metrics address 'nonsense' is not HOST:PORT (e.g. 127.0.0.1:9464) or 'off'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = await asyncio.to_thread(
            subprocess.run, [*argv, "--metrics-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"medkit: cannot serve worker metrics on 127.0.0.1:{port}: ")


async def test_a_taken_default_address_only_costs_the_endpoint(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    """Several workers on one host with the default: the second runs without the endpoint; an
    address someone asked for is never silently dropped."""
    metrics = WorkerMetrics(deps.ledger.engine)
    worker = build_worker(ts_env.client, queue, deps, policy_file(own_service(tmp_path)))
    worker_health = WorkerHealth(worker, ts_env.client)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with worker_endpoint(metrics, worker_health,
                                   MetricsAddress("127.0.0.1", port, explicit=False)) as server:
            assert server is None
        with pytest.raises(MetricsAddressInUse, match=f"cannot serve worker metrics on 127.0.0.1:{port}"):
            async with worker_endpoint(metrics, worker_health,
                                       MetricsAddress("127.0.0.1", port, explicit=True)):
                pass


async def test_medkit_dev_s_worker_serves_health_and_medkit_metrics(
    ts_env: WorkflowEnvironment, queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("MEDKIT_METRICS_ADDRESS", f"127.0.0.1:{port}")
    service = own_service(tmp_path, health_poll={"enabled": True, "interval": "1h"})
    async with metered_client(ts_env) as (client, buffer, _):
        dev = asyncio.create_task(run_worker_and_poller(
            client, queue, tmp_path / "state", policy_file(service), ProcessSupervisor(tmp_path),
            sdk_metrics=buffer))
        await dev_metrics_are_served(ts_env, queue, port, dev)


async def dev_metrics_are_served(ts_env: WorkflowEnvironment, queue: str, port: int,
                                 dev: asyncio.Task[None]) -> None:
    """The dev worker's /healthz and /metrics: medkit's families and the SDK's, then stop it."""
    try:
        facts = await eventually(lambda: healthy_facts(port), timeout=30)
        assert facts["task_queue"] == queue
        families = await scrape_families(port)
        assert families >= MEDKIT_FAMILIES
        assert "temporal_worker_start" in families  # the SDK's own, through the same endpoint
    finally:
        dev.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dev
        await stop_fleet_coordinator(ts_env.client, queue)
