"""The worker's HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`, beside the worker.

It runs in the worker's event loop, so a scrape sees the worker's state as it is; database
reads and rendering run in a thread so a slow store never blocks polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from datetime import timedelta
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.worker import Worker

from workers.metrics import METRICS_ADDRESS_ENV, MetricsAddress, WorkerMetrics

DRAIN_INTERVAL = 1.0
"""Seconds between drains of the SDK's metric buffer when nobody scrapes."""

CONNECTIVITY_TIMEOUT = timedelta(seconds=2)
"""How long /healthz waits for the Temporal frontend before calling it unreachable."""


class MetricsAddressInUse(Exception):
    """The metrics address cannot be bound; the message names it and what to do."""


class WorkerHealth:
    """What /healthz reports: the worker polls its task queue and reaches Temporal."""

    def __init__(self, worker: Worker, client: Client) -> None:
        self._worker = worker
        self._client = client
        self.shutting_down = False

    async def connected(self) -> bool:
        """Whether the Temporal frontend answers a cheap call right now."""
        try:
            await self._client.workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=CONNECTIVITY_TIMEOUT)
        except Exception:
            return False
        return True

    async def report(self) -> tuple[bool, dict[str, Any]]:
        """Healthy or not, and the facts behind it."""
        running = self._worker.is_running and not self.shutting_down
        connected = await self.connected() if running else False
        healthy = running and connected
        return healthy, {
            "status": "ok" if healthy else "unavailable",
            "worker_running": self._worker.is_running,
            "shutting_down": self.shutting_down,
            "connected": connected,
            "task_queue": self._worker.task_queue,
            "namespace": self._client.namespace,
        }


async def drain_regularly(metrics: WorkerMetrics) -> None:
    """Empty the SDK's metric buffer every DRAIN_INTERVAL until cancelled, so it never overflows
    (also when the endpoint could not be served)."""
    while True:
        await asyncio.sleep(DRAIN_INTERVAL)
        await asyncio.to_thread(metrics.drain)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker owns SIGTERM and SIGINT and drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leave the process's signal handling alone."""
        yield


def metrics_app(metrics: WorkerMetrics, health: WorkerHealth) -> Starlette:
    """The two routes; anything else is a 404."""

    async def serve_metrics(request: Request) -> Response:
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=metrics.content_type)

    async def serve_health(request: Request) -> Response:
        healthy, facts = await health.report()
        return JSONResponse(facts, status_code=200 if healthy else 503)

    return Starlette(routes=[Route("/metrics", serve_metrics, methods=["GET"]),
                             Route("/healthz", serve_health, methods=["GET"])])


class MetricsServer:
    """Serves a worker's metrics and health on host:port (port 0: any free port) until stopped."""

    def __init__(self, metrics: WorkerMetrics, health: WorkerHealth, host: str, port: int) -> None:
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose, given port 0)."""
        if self._socket is None:
            raise RuntimeError("the metrics server has not started")
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Bind (an OSError names the address when it is taken) and serve in the background."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as err:
            sock.close()
            raise MetricsAddressInUse(
                f"cannot serve worker metrics on {self._host}:{self._port}: {err.strerror}; pass "
                "--metrics-address HOST:PORT (or 'off')") from err
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        config = uvicorn.Config(metrics_app(self._metrics, self._health), log_level="warning",
                                lifespan="off", access_log=False)
        self._server = _EmbeddedServer(config)
        self._tasks = [asyncio.create_task(self._server.serve(sockets=[sock])),
                       asyncio.create_task(drain_regularly(self._metrics))]
        while not self._server.started and not self._tasks[0].done():
            await asyncio.sleep(0.01)
        if self._tasks[0].done():
            await self._tasks[0]
        structlog.get_logger("medkit.metrics").info(
            "serving worker metrics", address=f"{self._host}:{self.port}", paths=["/metrics", "/healthz"])

    async def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._socket is not None:
            self._socket.close()


@contextlib.asynccontextmanager
async def serving(metrics: WorkerMetrics, health: WorkerHealth, host: str,
                  port: int) -> AsyncIterator[MetricsServer]:
    """Serve for the duration of the block."""
    server = MetricsServer(metrics, health, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def worker_endpoint(metrics: WorkerMetrics, health: WorkerHealth,
                          address: MetricsAddress) -> AsyncIterator[MetricsServer | None]:
    """Serve at `address` for the duration of the block. A taken address stops the worker when
    it was asked for (MetricsAddressInUse); a taken default is a warning, the worker runs without
    the endpoint, and the SDK's buffer is still drained so it never overflows."""
    server = MetricsServer(metrics, health, address.host, address.port)
    try:
        await server.start()
    except MetricsAddressInUse as err:
        if address.explicit:
            raise
        structlog.get_logger("medkit.metrics").warning(
            "worker metrics not served: the default address is taken; set --metrics-address or "
            f"{METRICS_ADDRESS_ENV}", error=str(err))
    else:
        try:
            yield server
        finally:
            await server.stop()
        return
    draining = asyncio.create_task(drain_regularly(metrics))
    try:
        yield None
    finally:
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining
