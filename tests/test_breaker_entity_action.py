"""The `breaker_entity` action: a recovery trips a fleet's breaker entity through a real medkit
worker (whose own client sends the update), the entity's status shows it, and the worker's policy
guard refuses a forged spec naming another entity before anything is sent."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.breaker_entity import BreakerEntityState
from models.phases import Severity
from models.policy import ServicePolicy
from models.status import RecoveryStatus
from tests.conftest import eventually, free_port, policy_file, running
from tests.scripted import detection, start
from tests.test_gateway import service_policy
from workers.breaker_entities import BreakerEntityNotFound, entity_status
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow


def tripping_policy(service: str, entity: str, down_port: int | None = None, **action: Any) -> ServicePolicy:
    """A service whose every ladder trips the entity `entity` first, then waits (its probe of
    `down_port` never passes, so the recovery then waits for a human)."""
    raw = service_policy(service, down_port or free_port())
    raw["actions"] = {"trip-payments": {"kind": "breaker_entity", "name": entity, "command": "trip",
                                        **action}}
    rung = [{"name": "trip", "steps": [{"action": "trip-payments"}, {"wait": "100ms"}]}]
    raw["ladders"] = {"minor": rung, "major": rung, "critical": rung}
    return ServicePolicy.model_validate(raw)


async def actions_of(handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus]) -> list[str]:
    status = await handle.query(RecoveryWorkflow.status)
    return [event.reason for event in status.timeline if event.kind == "action"]


async def test_a_recovery_trips_the_entity_and_its_status_shows_it(
        ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps) -> None:
    entity = f"payments-{uuid.uuid4().hex[:8]}"
    policy = tripping_policy("checkout", entity, if_missing="start")
    async with running(build_worker(ts_env.client, queue, deps, policy_file(policy))):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.MINOR))
        try:
            async def tripped() -> BreakerEntityState | None:
                try:
                    status = await entity_status(ts_env.client, entity)
                except BreakerEntityNotFound:
                    return None
                return status if status.state == "open" else None
            status: BreakerEntityState = await eventually(tripped)
            assert status.traffic_fraction == 0.0
            reason = status.transitions[-1].reason
            assert reason.startswith(f"trip by medkit recovery {handle.id}: ")

            async def recorded() -> list[str]:
                return [a for a in await actions_of(handle) if a.startswith("trip-payments")]
            [action] = await eventually(recorded)
            assert action == (f"trip-payments: breaker entity breaker:{entity} trip: now open "
                              "(0% of traffic)")
        finally:
            await handle.terminate("test over")
            await ts_env.client.get_workflow_handle(f"breaker:{entity}").terminate("test over")


async def test_a_missing_entity_fails_the_step_unless_asked_to_start_it(
        ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps) -> None:
    entity = f"payments-{uuid.uuid4().hex[:8]}"
    policy = tripping_policy("checkout", entity)
    async with running(build_worker(ts_env.client, queue, deps, policy_file(policy))):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.MINOR))
        try:
            async def failed() -> list[str]:
                return [a for a in await actions_of(handle) if a.startswith("trip-payments failed")]
            [action] = await eventually(failed)
            assert f"no breaker entity named {entity!r} is running (if_missing: fail)" in action
        finally:
            await handle.terminate("test over")


async def test_the_policy_guard_refuses_a_forged_entity_name(
        ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps) -> None:
    entity, forged_entity = (f"payments-{uuid.uuid4().hex[:8]}" for _ in range(2))
    port = free_port()
    own = tripping_policy("checkout", entity, port, if_missing="start")
    forged = tripping_policy("checkout", forged_entity, port, if_missing="start")
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, forged, detection(severity=Severity.MINOR))
        try:
            async def refused() -> RecoveryStatus | None:
                status = await handle.query(RecoveryWorkflow.status)
                return status if any("the worker refused trip-payments" in e.reason
                                     for e in status.timeline) else None
            status: RecoveryStatus = await eventually(refused)
            assert any("differs from the worker's policy file" in e.reason for e in status.timeline)
            for name in (entity, forged_entity):
                try:
                    await entity_status(ts_env.client, name)
                except BreakerEntityNotFound:
                    continue
                raise AssertionError(f"breaker:{name} was started despite the refusal")
        finally:
            await handle.terminate("test over")
