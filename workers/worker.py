"""The medkit Temporal worker: RecoveryWorkflow and every activity on one task queue."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import timedelta
from pathlib import Path

import structlog
from temporalio.client import Client
from temporalio.runtime import MetricBuffer
from temporalio.worker import Interceptor, Worker

from activities.deps import ActivityDeps
from activities.fleet import FleetActivities
from activities.process import ProcessSupervisor
from activities.registry import build_activities
from models.policy import PolicyFile
from workers.action_failures import ActionFailureInterceptor
from workers.bytecode import ensure_workflow_bytecode
from workers.logging import LogContextInterceptor
from workers.metrics import MetricsAddress, MetricsInterceptor, WorkerMetrics
from workers.metrics_server import WorkerHealth, worker_endpoint
from workers.policy_guard import PolicyGuardInterceptor
from workflows.breaker import BreakerEntityWorkflow
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow

GRACEFUL_SHUTDOWN = timedelta(seconds=30)
HEARTBEAT_THROTTLE = timedelta(seconds=1)
"""Heartbeats reach the server at least every second, so an abort cancels a running action fast."""
"""How long SIGTERM lets running activities finish before the worker exits."""


def build_worker(
    client: Client, task_queue: str, deps: ActivityDeps, policy: PolicyFile,
    supervisor: ProcessSupervisor | None = None, metrics: WorkerMetrics | None = None,
) -> Worker:
    """A worker for medkit's workflow and activities, with structured logging bound per activity.

    `policy` is the worker's own policy file: the authority over which actions, probes and routes
    its activities may run, whatever policy snapshot a workflow's input carries. With `metrics`,
    its activities' outcomes are counted there; that interceptor sits outside the policy guard,
    so refused actions count too.
    """
    workflows = [RecoveryWorkflow, FleetCoordinatorWorkflow, BreakerEntityWorkflow]
    ensure_workflow_bytecode(workflows)
    counting: list[Interceptor] = [MetricsInterceptor(metrics)] if metrics is not None else []
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=[
            *build_activities(deps, supervisor or ProcessSupervisor(deps.state_dir)),
            *FleetActivities(client).activities(),
        ],
        interceptors=[LogContextInterceptor(), *counting, PolicyGuardInterceptor(policy),
                      ActionFailureInterceptor(deps.ledger)],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )


async def run_worker(client: Client, task_queue: str, state_dir: Path, policy: PolicyFile,
                     database_url: str | None = None, metrics_address: MetricsAddress | None = None,
                     sdk_metrics: MetricBuffer | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain running activities and return; `policy` is the
    worker's own policy file, which its activities are checked against.

    With `metrics_address`, `/metrics` and `/healthz` are served there from before the worker
    starts until it has drained; `/healthz` says 503 from the signal on. `sdk_metrics` is the
    buffer of the client's runtime, whose SDK metrics `/metrics` then carries too."""
    log = structlog.get_logger("medkit.worker")
    deps = ActivityDeps.create(state_dir, database_url)
    metrics = WorkerMetrics(deps.ledger.engine, sdk_metrics) if metrics_address else None
    worker = build_worker(client, task_queue, deps, policy, metrics=metrics)
    health = WorkerHealth(worker, client)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as endpoint:
        if metrics is not None and metrics_address is not None:
            await endpoint.enter_async_context(worker_endpoint(metrics, health, metrics_address))
        async with worker:
            # The worker checks its namespace in a task of its own, then starts; a failed check
            # cancels this one. "started" only once it really has.
            while not worker.is_running:
                await asyncio.sleep(0.01)
            log.info("worker started", task_queue=task_queue, namespace=client.namespace,
                     services=[service.name for service in policy.services])
            await stop.wait()
            health.shutting_down = True
            log.info("shutting down: draining running activities",
                     grace_seconds=GRACEFUL_SHUTDOWN.total_seconds())
    await deps.http.aclose()
    log.info("worker stopped")
