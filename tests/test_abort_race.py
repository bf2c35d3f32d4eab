"""An abort that arrives together with the result of the last validation round, on the real dev
server, under both orders in which the Python SDK can apply one activation's jobs.

The validation probe rounds are local activities: their results reach the workflow inside the
workflow task that runs them, never together with a new message from Temporal, except in one
case. A local activity that runs past most of the task's timeout makes the worker complete the
task and ask for a new one (a workflow task "heartbeat"); a result that comes in while the
answer is on its way waits for it (sdk-core never activates a run without a task), and then
goes to the workflow in one activation with whatever the new task carries, such as an abort.
A proxy in front of Temporal holds the answer to that heartbeat until the round has completed,
so both land in one activation every time, with no timing involved.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateStage
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker._workflow_instance import _WorkflowLogicFlag

from activities.deps import ActivityDeps
from models.decisions import DecisionVerdict, OperatorDecision
from models.phases import Phase
from tests.conftest import WebhookReceiver, eventually
from tests.holding_proxy import HoldingProxy, workflow_task_heartbeat
from tests.scripted import Script, detection, phases, scripted_policy, start

ADMITTED = UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED


@pytest.mark.parametrize("single_batch", [False, True], ids=["sdk-default-order", "single-batch"])
async def test_an_abort_arriving_with_the_last_validation_round(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
    single_batch: bool,
) -> None:
    """The abort update and the result of the last validation round reach the workflow in one
    activation.

    With the SDK's default order (temporalio 1.35: updates run, and wake what waits for them,
    before the activation's results are applied), _guarded sees only the abort: it cancels the
    round and the recovery ends as Aborted, answering "ended as Aborted". Pins that an abort
    accepted is never lost to a result that came with it.

    With every job applied before any code runs (the SDK's PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_
    SINGLE_BATCH flag, which its TODO says becomes the default), _guarded finds the round done
    and takes it, validation passes and the recovery ends as Recovered; the abort, accepted, came
    too late. Pins the other branch of the abort verdict (ABORT_VERDICT_PATCH): the operator is
    told so, with the phase the recovery really ended in, not Aborted."""
    script = Script()
    script.block_actions = True
    script.probe("http", False)  # one of two probes fails at first → minor: one restart
    # A probe round may run past the workflow task's heartbeat (8 s of its 10 s timeout).
    policy = scripted_policy(
        webhook_receiver.url,
        probes=[{"kind": "http", "name": "http", "url": "http://127.0.0.1:9/healthz",
                 "timeout": "30s"}, {"kind": "tcp", "name": "tcp", "port": 9}],
        validation={"samples": 1, "interval": "1s"},
    )
    target = dev_env.client.service_client.config.target_host
    proxy = HoldingProxy(target, workflow_task_heartbeat(dev_env.client.namespace))
    with proxy.running():
        worker_client = await Client.connect(proxy.address, namespace=dev_env.client.namespace,
                                             data_converter=pydantic_data_converter)
        async with script.worker(worker_client, queue, deps) as worker:
            worker._workflow_worker._set_default_workflow_logic_flag(  # type: ignore[union-attr]
                _WorkflowLogicFlag.PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_SINGLE_BATCH,
                enabled=single_batch)
            handle = await start(dev_env.client, queue, policy, detection())
            await eventually(lambda: _ran(script, "restart"))
            script.probe_gate = asyncio.Event()
            script.block_actions = False  # the rung ends; its only validation round starts
            await asyncio.wait_for(script.probe_waiting.wait(), 30)
            update_id = f"abort-{uuid.uuid4().hex[:8]}"
            update = asyncio.ensure_future(_abort(handle, update_id))
            await eventually(lambda: _admitted(dev_env.client, handle.id, update_id))
            assert await asyncio.to_thread(proxy.cued.wait, 60), "no workflow task heartbeat"
            script.probe_gate.set()  # the round completes while the heartbeat's answer is held
            await eventually(lambda: _handed_over(worker))
            proxy.release()
            verdict = await asyncio.wait_for(update, 60)
            result = await handle.result()
    assert verdict.accepted
    assert any(e.kind == "decision" and e.reason.startswith("abort (update)")
               for e in result.timeline)
    if single_batch:
        assert verdict.phase == result.phase == Phase.RECOVERED
        assert verdict.message == ("abort accepted, but the recovery ended as Recovered before "
                                   "the abort took effect")
        assert phases(result)[-3:] == ["AutoRemediation", "Validating", "Recovered"]
    else:
        assert verdict.phase == result.phase == Phase.ABORTED
        assert verdict.message == "abort accepted; the recovery ended as Aborted"
        assert phases(result)[-3:] == ["AutoRemediation", "Validating", "Aborted"]


async def _abort(handle: WorkflowHandle[Any, Any], update_id: str) -> DecisionVerdict:
    """Send the abort as an update with a known id; its verdict."""
    decision = OperatorDecision(operator="alice", reason="stop", at=datetime.now(UTC))
    started = await handle.start_update("abort", decision, id=update_id,
                                        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                                        result_type=DecisionVerdict)
    verdict: DecisionVerdict = await started.result()
    return verdict


async def _admitted(client: Client, workflow_id: str, update_id: str) -> bool:
    """Whether Temporal has admitted the update (it then waits for the next workflow task);
    an update not found has not reached it yet."""
    try:
        await client.workflow_service.poll_workflow_execution_update(
            PollWorkflowExecutionUpdateRequest(
                namespace=client.namespace, identity="test",
                update_ref=UpdateRef(workflow_execution=WorkflowExecution(workflow_id=workflow_id),
                                     update_id=update_id),
                wait_policy=WaitPolicy(lifecycle_stage=ADMITTED),
            ))
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return False
    return True


async def _ran(script: Script, action: str) -> bool:
    return action in script.actions


async def _handed_over(worker: Worker) -> bool:
    """Whether the worker has handed every activity's result to sdk-core: the SDK forgets a
    running activity only once its completion call has returned."""
    assert worker._activity_worker is not None
    return not worker._activity_worker._running_activities
