"""Fuzzing the running `medkit serve` through its own OpenAPI spec (schemathesis + Hypothesis).

Valid-shaped and invalid input for every operation, with the right token for each: nothing
may answer 5xx, every 4xx is the gateway's one-line error body, and no recovery may start (the
policy's only service name is never guessed, so every shaped-valid ingest names an unknown
service). The breaker routes are fuzzed too, with a medkit worker on the gateway's task queue to
run the entities that shaped-valid reports start (starting one is that route's purpose); those
entities are terminated afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from gateway.middleware import required_role
from gateway.schemas import ErrorBody
from models.policy import ServicePolicy
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN, running_gateway
from tests.conftest import eventually, free_port, policy_file, running
from tests.server_process import ServerProcess
from tests.test_gateway import service_policy
from workers.worker import build_worker

EXAMPLES = 25


async def count_workflows(client: Client, query: str) -> int:
    """Executions ever started that match a visibility query."""
    return (await client.count_workflows(query)).count


async def terminate_breaker_entities(client: Client, task_queue: str) -> None:
    """End the entities the fuzzed reports started, so none is left on the shared dev server."""
    query = (f"TaskQueue = '{task_queue}' AND WorkflowType = 'BreakerEntityWorkflow' "
             "AND ExecutionStatus = 'Running'")
    async for execution in client.list_workflows(query):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(execution.id).terminate("fuzz test finished")


def fuzz(operation: Any, mode: GenerationMode, gateway: ServerProcess, headers: dict[str, str]) -> None:
    """Run generated cases of one operation against the gateway; none may answer 5xx."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call(base_url=gateway.url, headers=headers, timeout=30)
        answer = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        assert response.status_code < 500, f"{answer}\n{gateway.log_tail()}"
        if response.status_code >= 400:
            error = ErrorBody.model_validate_json(response.text)  # one clear line, not a stack
            assert error.detail.strip(), answer

    try:
        no_server_error()
    except Unsatisfiable:
        # An operation without parameters or body (/healthz) has no invalid form.
        assert mode == GenerationMode.NEGATIVE


def fuzz_every_operation(gateway: ServerProcess) -> None:
    """Positive and negative cases of each operation in the gateway's spec, with its role's token."""
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    assert {"/v1/breakers/{name}", "/v1/breakers/{name}/report",
            "/v1/breakers/{name}/command"} <= {operation.path for operation in operations}
    for operation in operations:
        role = required_role(operation.path)
        token = OPERATOR_TOKEN if role and role.value == "operator" else DETECTOR_TOKEN
        headers = {"Authorization": f"Bearer {token}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, gateway, headers)


async def test_no_input_produces_a_5xx_or_starts_a_recovery(
    dev_env: WorkflowEnvironment, deps: ActivityDeps, queue: str, tmp_path: Path,
) -> None:
    address = dev_env.client.service_client.config.target_host
    unguessable = service_policy(f"fuzz-target-{uuid.uuid4().hex[:10]}", free_port())
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump({"version": 1, "services": [unguessable]}))
    worker = build_worker(dev_env.client, queue, deps,
                          policy_file(ServicePolicy.model_validate(unguessable)))
    try:
        with running_gateway(tmp_path, policy_path, address, queue) as gateway:
            async with running(worker):
                # schemathesis calls block, so they run in a thread while the worker runs here
                await asyncio.to_thread(fuzz_every_operation, gateway)
    finally:
        await terminate_breaker_entities(dev_env.client, queue)
    entities = f"TaskQueue = '{queue}' AND WorkflowType = 'BreakerEntityWorkflow'"
    await eventually(lambda: count_workflows(dev_env.client, entities))  # reports did reach Temporal
    recoveries = f"TaskQueue = '{queue}' AND WorkflowType = 'RecoveryWorkflow'"
    assert await count_workflows(dev_env.client, recoveries) == 0
