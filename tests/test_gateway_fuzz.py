"""Fuzzing the running `medkit serve` through its own OpenAPI spec (schemathesis + Hypothesis).

Valid-shaped and invalid input for every operation, with the right token for each: nothing
may answer 5xx, and no recovery may start (the policy's only service name is never guessed,
so every shaped-valid ingest names an unknown service). Workflows on the gateway's task
queue are counted before and after.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from gateway.middleware import required_role
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN, running_gateway
from tests.conftest import free_port
from tests.server_process import ServerProcess
from tests.test_gateway import service_policy

EXAMPLES = 25


def count_workflows(address: str, task_queue: str) -> int:
    """Executions ever started on the task queue (in a thread: the test loop is not running)."""
    async def count() -> int:
        client = await Client.connect(address)
        result = await client.count_workflows(f"TaskQueue = '{task_queue}'")
        return result.count

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, count()).result()


def fuzz(operation: Any, mode: GenerationMode, gateway: ServerProcess, headers: dict[str, str]) -> None:
    """Run generated cases of one operation against the gateway; none may answer 5xx."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call(base_url=gateway.url, headers=headers, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:500]}\n{gateway.log_tail()}")

    try:
        no_server_error()
    except Unsatisfiable:
        # An operation without parameters or body (/healthz) has no invalid form.
        assert mode == GenerationMode.NEGATIVE


def test_no_input_produces_a_5xx_or_starts_a_workflow(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    address = dev_env.client.service_client.config.target_host
    task_queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    policy_file = tmp_path / "policy.yaml"
    unguessable = f"fuzz-target-{uuid.uuid4().hex[:10]}"
    policy_file.write_text(yaml.safe_dump({"version": 1,
                                           "services": [service_policy(unguessable, free_port())]}))
    before = count_workflows(address, task_queue)
    with running_gateway(tmp_path, policy_file, address, task_queue) as gateway:
        schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 8
        for operation in operations:
            if operation.path == "/v1/breakers/{name}/report":
                # Starting a breaker entity is that route's purpose; with no worker here, reads
                # of an entity it started would wait on Temporal. tests/test_breaker_entity_gateway.py
                # covers it with a worker.
                continue
            role = required_role(operation.path)
            token = OPERATOR_TOKEN if role and role.value == "operator" else DETECTOR_TOKEN
            headers = {"Authorization": f"Bearer {token}"}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(operation, mode, gateway, headers)
        assert count_workflows(address, task_queue) == before == 0
