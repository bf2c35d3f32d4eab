"""The breaker entity through the real `medkit serve` and a real worker on the dev server: its
routes (status, report with signal-with-start, operator commands, tokens, names), and
`EntityFollower` holding a local breaker to the entity: refused while it is open, admitted again
after a reset, and through half-open trials and the ramp back to closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from breakers import BreakerConfig, CircuitBreaker, CircuitOpenError, EntityFollower, State
from models.breaker_entity import BreakerEntitySettings, BreakerEntityState, breaker_workflow_id
from models.policy import ServicePolicy
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN, running_gateway
from tests.conftest import eventually, free_port, policy_file, running
from tests.test_gateway import service_policy
from workers.worker import build_worker
from workflows.breaker import BreakerEntityWorkflow

DETECTOR = {"Authorization": f"Bearer {DETECTOR_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class Stack:
    """A worker and `medkit serve` on one task queue of the dev server, and a client on the gateway."""

    env: WorkflowEnvironment
    task_queue: str
    url: str
    http: httpx.AsyncClient


@pytest.fixture
def gateway_url(dev_env: WorkflowEnvironment, tmp_path: Path, queue: str) -> Iterator[str]:
    """`medkit serve` on the test's task queue."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "services": [service_policy("svc", free_port())]}))
    address = dev_env.client.service_client.config.target_host
    with running_gateway(tmp_path, policy, address, queue) as gateway:
        yield gateway.url


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
                gateway_url: str) -> AsyncIterator[Stack]:
    """The gateway plus a medkit worker (which runs the entities) on the same queue."""
    own_policy = policy_file(ServicePolicy.model_validate(service_policy("svc", free_port())))
    async with running(build_worker(dev_env.client, queue, deps, own_policy)), \
            httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        yield Stack(env=dev_env, task_queue=queue, url=gateway_url, http=http)


def new_name() -> str:
    return f"payments-{uuid.uuid4().hex[:8]}"


async def command(stack: Stack, name: str, action: str) -> httpx.Response:
    return await stack.http.post(f"/v1/breakers/{name}/command", headers=OPERATOR, json={
        "action": action, "operator": "alice", "reason": f"{action} in a test"})


async def test_routes_read_report_and_command_the_entity(stack: Stack) -> None:
    name = new_name()
    missing = await stack.http.get(f"/v1/breakers/{name}", headers=DETECTOR)
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no breaker entity named {name!r} is running"}
    assert (await command(stack, name, "trip")).status_code == 404
    assert (await stack.http.get("/v1/breakers/bad%20name!", headers=DETECTOR)).status_code == 422
    assert (await stack.http.get(f"/v1/breakers/{name}")).status_code == 401

    report = {"reporter": "pod-1", "success": False, "detail": "HTTP 503"}
    first = await stack.http.post(f"/v1/breakers/{name}/report", headers=DETECTOR, json=report)
    assert first.status_code == 202
    assert first.json() == {"workflow_id": breaker_workflow_id(name), "started": True}
    second = await stack.http.post(f"/v1/breakers/{name}/report", headers=DETECTOR, json=report)
    assert second.json()["started"] is False
    bad_report = await stack.http.post(f"/v1/breakers/{name}/report", headers=DETECTOR,
                                       json={"reporter": "", "success": True})
    assert bad_report.status_code == 422 and bad_report.json()["detail"].startswith("body.reporter")

    async def two_failures() -> BreakerEntityState | None:
        read = await stack.http.get(f"/v1/breakers/{name}", headers=DETECTOR)
        status = BreakerEntityState.model_validate(read.json())
        return status if status.consecutive_failures == 2 else None
    status: BreakerEntityState = await eventually(two_failures)
    assert (status.state, status.traffic_fraction, status.settings) == (
        "closed", 1.0, BreakerEntitySettings(name=name))

    refused = await stack.http.post(f"/v1/breakers/{name}/command", headers=DETECTOR, json={
        "action": "trip", "operator": "mallory", "reason": "a detector may not"})
    assert refused.status_code == 403
    tripped = await command(stack, name, "trip")
    assert tripped.status_code == 200
    assert (tripped.json()["state"], tripped.json()["traffic_fraction"]) == ("open", 0.0)
    read_by_operator = await stack.http.get(f"/v1/breakers/{name}", headers=OPERATOR)
    assert read_by_operator.json()["transitions"][-1]["reason"] == "trip by alice: trip in a test"
    reset = await command(stack, name, "reset")
    assert (reset.json()["state"], reset.json()["traffic_fraction"]) == ("closed", 1.0)


def charge() -> str:
    return "charged"


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (without blocking the loop) until the follower's thread made `condition()` true."""
    async def check() -> bool:
        return condition()
    try:
        await eventually(check, timeout=60)
    except AssertionError:
        raise AssertionError(f"never: {what}") from None


async def test_the_follower_refuses_while_the_entity_is_open_and_admits_after_reset(stack: Stack) -> None:
    name = new_name()
    created = await stack.http.post(f"/v1/breakers/{name}/report", headers=DETECTOR,
                                    json={"reporter": "pod-1", "success": True})
    assert created.status_code == 202
    local = CircuitBreaker(name, BreakerConfig())
    follower = EntityFollower(local, stack.url, DETECTOR_TOKEN, interval=0.05)
    try:
        await until(lambda: follower.entity_state == "closed", "the follower read the entity")
        assert local.call(charge) == "charged"

        await command(stack, name, "trip")
        await until(lambda: local.state is State.OPEN, "the local breaker opened with the entity")
        ran: list[str] = []
        with pytest.raises(CircuitOpenError) as refused:
            local.call(lambda: ran.append("ran"))
        assert ran == [] and refused.value.retry_after > 0  # the entity's open time is left
        assert local.snapshot().held_fraction == 0.0

        await command(stack, name, "reset")
        await until(lambda: local.state is State.CLOSED, "the local breaker closed with the entity")
        assert local.call(charge) == "charged"
        assert local.snapshot().held_fraction is None
    finally:
        await asyncio.to_thread(follower.close)


async def test_followed_trials_move_the_entity_through_its_ramp_to_closed(stack: Stack) -> None:
    name = new_name()
    settings = BreakerEntitySettings(name=name, open_for="1s", half_open_successes=2, trial_fraction=0.5,
                                     ramp_for="6s", ramp_steps=2)
    handle = await stack.env.client.start_workflow(
        BreakerEntityWorkflow.run, BreakerEntityState(settings=settings), id=breaker_workflow_id(name),
        task_queue=stack.task_queue)
    local = CircuitBreaker(name, BreakerConfig())
    follower = EntityFollower(local, stack.url, DETECTOR_TOKEN, interval=0.05, reporter="pod-7")
    try:
        await command(stack, name, "trip")
        await until(lambda: local.state is State.HALF_OPEN, "the entity's open time ended")
        assert local.snapshot().held_fraction == 0.5
        admitted = 0
        for _ in range(4):  # half of the calls are admitted as trials; their successes are reported
            try:
                local.call(charge)
                admitted += 1
            except CircuitOpenError:
                pass
        assert admitted == 2
        await until(lambda: local.state is State.RAMPING, "the reported trials started the ramp")
        assert local.snapshot().held_fraction in (0.5, 1.0)
        await until(lambda: local.state is State.CLOSED, "the ramp ended")
        status = await handle.query(BreakerEntityWorkflow.status)
        assert [t.to_state for t in status.transitions] == ["open", "half_open", "ramping", "closed"]
        assert status.transitions[2].reason == "2 trial calls succeeded"
        assert follower.reports_sent >= 2
    finally:
        await asyncio.to_thread(follower.close)
        await handle.terminate("test over")
