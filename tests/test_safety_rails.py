"""Safety rails: remediation budget, per-service exclusivity, fleet blast radius, crash-safe
leases, dry-run and secrets. Each test fails if its rule is removed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from activities.fleet import FleetActivities
from activities.process import ProcessSupervisor
from demo.policy import DEMO_SERVICE, demo_policy
from models.fleet import FleetSpec, LeaseRequest, coordinator_workflow_id
from models.phases import DecisionKind, Phase, Severity
from models.policy import PolicyFile, ServicePolicy
from tests.conftest import (
    DemoService,
    WebhookReceiver,
    eventually,
    free_port,
    policy_file,
    running,
    start_time_skipping,
)
from tests.scripted import (
    Script,
    blocking_script,
    detection,
    lease_and_give_back,
    scripted_policy,
    start,
    wait_for_phase,
)
from tests.test_incidents_cli import run_cli
from tests.test_policy_authority import PY, own_service
from tests.test_recovery_paths import operator
from workers.client import send_decision, static_summary
from workers.logging import quiet_noisy_loggers
from workers.worker import build_worker
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import ACTION_RETRY, RecoveryWorkflow


def two_services(webhook_url: str, fleet: dict[str, Any] | None = None) -> list[ServicePolicy]:
    """Services `checkout` and `payments` in one policy file, optionally with fleet limits."""
    one = scripted_policy(webhook_url).model_dump(mode="json", exclude={"fleet"})
    other = {**one, "name": "payments"}
    data: dict[str, Any] = {"services": [one, other], "fleet": fleet or {}}
    return PolicyFile.model_validate(data).services


async def test_budget_exhausted_hands_over_instead_of_restarting_again(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, demo_service: DemoService,
    tmp_path: Path,
) -> None:
    data = demo_policy(demo_service.port, tmp_path)
    data["services"][0]["budgets"] = [{"actions": ["restart"], "max_actions": 1, "window": "1h"}]  # type: ignore[index]
    policy = PolicyFile.model_validate(data).service(DEMO_SERVICE)
    async with running(build_worker(ts_env.client, queue, deps, policy_file(policy),
                                    ProcessSupervisor(tmp_path))):
        demo_service.inject("unhealthy")
        first = await start(ts_env.client, queue, policy, detection(service=DEMO_SERVICE))
        assert (await first.result()).phase == Phase.RECOVERED
        restarted_pid = demo_service.pid()
        demo_service.inject("unhealthy")  # the same fault comes back: a restart loop begins
        second = await start(ts_env.client, queue, policy, detection(service=DEMO_SERVICE))
        status = await wait_for_phase(second, Phase.MANUAL_INTERVENTION)
        assert "budget exhausted: 1 of 1 restart actions used on demo" in status.timeline[-1].reason
        assert demo_service.pid() == restarted_pid  # not restarted a second time
        await send_decision(ts_env.client, second.id, DecisionKind.RESOLVE, operator())
        assert (await second.result()).phase == Phase.RESOLVED


async def test_failed_actions_count_against_the_budget(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    """An action whose attempts all fail still acted, so it uses the budget: with a budget of
    one, the second rung hands over instead of running the command again (it ran 9 times, 3
    rungs of 3 attempts, when only finished actions counted)."""
    runs = tmp_path / "runs"
    fixed = tmp_path / "fixed"
    ladder = [{"name": "fix", "steps": [{"action": "fix"}]}]
    policy = PolicyFile.model_validate({"services": [{
        "name": "svc",
        "probes": [{"kind": "command", "name": "fixed", "argv": [
            PY, "-c", "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 1)", str(fixed)]}],
        "actions": {"fix": {"kind": "command", "argv": [
            PY, "-c", "import sys; open(sys.argv[1], 'a').write('x'); sys.exit(1)", str(runs)]}},
        "ladders": {"minor": ladder, "major": ladder, "critical": ladder},
        "validation": {"samples": 1},
        "retry": {"max_attempts": 3, "initial_backoff": "1s"},
        "escalation": {"max_escalations": 0},
        "budgets": [{"actions": ["fix"], "max_actions": 1, "window": "1h"}],
        "health_poll": {"enabled": False},
    }]}).services[0]
    async with running(build_worker(ts_env.client, queue, deps, policy_file(policy))):
        handle = await start(ts_env.client, queue, policy, detection(service="svc"))
        status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, timeout=120, skip_time=True)
        assert "budget exhausted: 1 of 1 fix actions used on svc" in status.timeline[-1].reason
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE, operator())
        await handle.result()
    assert len(runs.read_text()) == ACTION_RETRY.maximum_attempts  # one step, its attempts only


async def test_second_incident_on_a_service_queues_behind_the_first(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = blocking_script()
    policy = scripted_policy(webhook_receiver.url)
    async with script.worker(ts_env.client, queue, deps):
        first = await start(ts_env.client, queue, policy, detection(summary="first"))
        await wait_for_phase(first, Phase.AUTO_REMEDIATION)
        while not script.actions:
            await asyncio.sleep(0.05)
        script.probe("http", False)
        second = await start(ts_env.client, queue, policy, detection(summary="second"))
        for _ in range(200):
            status = await second.query(RecoveryWorkflow.status)
            if any(e.kind == "safety" and "queued" in e.reason for e in status.timeline):
                break
            await asyncio.sleep(0.05)
        assert status.current_step is not None and status.current_step.startswith("queued")
        assert script.actions == ["restart"]  # the second has not acted
        script.block_actions = False
        assert (await first.result()).phase == Phase.RECOVERED
        later = await second.result()
    # The first recovery fixed it: the second probes again once it holds the lease, finds the
    # service healthy and ends without restarting it a second time.
    assert later.phase == Phase.DISMISSED
    assert script.finished == ["checkout:restart"]
    assert "healthy again before restart" in next(
        e.reason for e in later.timeline if e.to_phase == Phase.DISMISSED)
    granted = [e.reason for e in later.timeline if e.kind == "safety"]
    assert granted[-1] == f"lease granted after {first.id} finished"


async def test_a_recovery_aborted_while_queued_leaves_the_queue_at_once(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    script = blocking_script()
    policy = scripted_policy(webhook_receiver.url)
    coordinator = ts_env.client.get_workflow_handle_for(
        FleetCoordinatorWorkflow.run, coordinator_workflow_id(queue))
    async with script.worker(ts_env.client, queue, deps):
        first = await start(ts_env.client, queue, policy, detection(summary="first"))
        while not script.actions:
            await asyncio.sleep(0.05)
        script.probe("http", False)
        second = await start(ts_env.client, queue, policy, detection(summary="second"))
        for _ in range(200):
            if (await coordinator.query(FleetCoordinatorWorkflow.leases)).waiting:
                break
            await asyncio.sleep(0.05)
        verdict = await send_decision(ts_env.client, second.id, DecisionKind.ABORT, operator())
        assert verdict.accepted
        assert (await second.result()).phase == Phase.ABORTED
        for _ in range(100):  # the coordinator applies the release signal in a task of its own
            leases = await coordinator.query(FleetCoordinatorWorkflow.leases)
            if not leases.waiting:
                break
            await asyncio.sleep(0.05)
        assert leases.waiting == {} and list(leases.holders) == [policy.name]
        assert leases.holders[policy.name].workflow_id == first.id
        script.block_actions = False
        assert (await first.result()).phase == Phase.RECOVERED
    assert script.actions == ["restart"]


@pytest.mark.parametrize(("limit", "reason"), [
    ({"max_services": 1}, "blast radius: 1 services already in remediation (checkout); limit 1"),
    ({"max_percent": 50}, "blast radius: 2 of 2 services (100%) would be in remediation "
                          "(checkout); limit 50%"),
], ids=["max_services", "max_percent"])
async def test_blast_radius_holds_new_recoveries_for_a_human(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, webhook_receiver: WebhookReceiver,
    limit: dict[str, int], reason: str,
) -> None:
    """Either cap (a number of services, or a share of the fleet, here the policy file's two
    services) holds the recovery that would exceed it for a human, without acting."""
    script = blocking_script()
    checkout, payments = two_services(webhook_receiver.url, limit)
    async with script.worker(ts_env.client, queue, deps):
        first = await start(ts_env.client, queue, checkout, detection(service="checkout"))
        while not script.actions:
            await asyncio.sleep(0.05)
        second = await start(ts_env.client, queue, payments, detection(service="payments"))
        held = await wait_for_phase(second, Phase.MANUAL_INTERVENTION)
        handover = next(e for e in held.timeline if e.to_phase == Phase.MANUAL_INTERVENTION)
        assert handover.reason.startswith(reason)
        async def paged() -> bool:
            return "manual_intervention" in webhook_receiver.events()

        await eventually(paged)  # a human is paged
        assert script.actions == ["restart"]  # payments did not act
        await send_decision(ts_env.client, second.id, DecisionKind.ABORT, operator())
        script.block_actions = False
        assert (await first.result()).phase == Phase.RECOVERED


@pytest.fixture
async def own_ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this test's own: a terminated workflow's orphaned activity can
    leave the server's time lock held, which must not slow the tests that share `ts_env`."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


async def test_a_crashed_holder_does_not_keep_its_lease(
    own_ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
    webhook_receiver: WebhookReceiver,
) -> None:
    client = own_ts_env.client
    script = blocking_script()
    policy, _ = two_services(webhook_receiver.url, {"reap_interval": "3s"})
    async with script.worker(client, queue, deps):
        first = await start(client, queue, policy, detection(summary="will crash"))
        while not script.actions:
            await asyncio.sleep(0.05)
        second = await start(client, queue, policy, detection(summary="waits"))
        coordinator = client.get_workflow_handle_for(
            FleetCoordinatorWorkflow.run, coordinator_workflow_id(queue))
        for _ in range(200):
            if (await coordinator.query(FleetCoordinatorWorkflow.leases)).waiting:
                break
            await asyncio.sleep(0.05)
        await first.terminate("simulated crash: nobody releases its lease")
        script.block_actions = False
        result = await asyncio.wait_for(second.result(), timeout=60)
    assert result.phase == Phase.RECOVERED
    reasons = [e.reason for e in result.timeline if e.kind == "safety"]
    assert reasons[-1] == f"lease granted after {first.id} finished"
    assert script.actions == ["restart", "restart"]


async def test_a_busy_fleet_does_not_put_off_the_check_of_lease_holders(
    own_ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
) -> None:
    """The holders are checked every reap interval even when requests and releases keep
    arriving more often than that: a crashed holder's lease must not outlive a busy fleet."""
    client = own_ts_env.client
    fleet = FleetActivities(client)
    limits = FleetSpec(reap_interval=timedelta(seconds=5))
    crashed = LeaseRequest(request_id="crashed", service="checkout", workflow_id="recovery:gone",
                           run_id="never-ran", task_queue=queue, limits=limits)
    coordinator = client.get_workflow_handle_for(FleetCoordinatorWorkflow.run,
                                                 coordinator_workflow_id(queue))
    holders: list[str] = ["checkout"]
    policies = policy_file(scripted_policy("http://127.0.0.1:9/hook"))  # no recovery runs here
    async with running(build_worker(client, queue, deps, policies)):
        assert (await fleet.request_fleet_lease(crashed)).verdict == "granted"
        for n in range(8):  # a request and a release every 2 s, for 16 s
            await own_ts_env.sleep(2)
            await lease_and_give_back(fleet, crashed, n)
            holders = sorted((await coordinator.query(FleetCoordinatorWorkflow.leases)).holders)
            if "checkout" not in holders:
                break
    assert "checkout" not in holders


async def test_dry_run_runs_the_whole_machine_and_touches_nothing(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, demo_service: DemoService,
    tmp_path: Path,
) -> None:
    data = demo_policy(demo_service.port, tmp_path)
    data["services"][0]["dry_run"] = True  # type: ignore[index]
    policy = PolicyFile.model_validate(data).service(DEMO_SERVICE)
    pid = demo_service.pid()
    async with running(build_worker(ts_env.client, queue, deps, policy_file(policy),
                                    ProcessSupervisor(tmp_path))):
        found = detection(service=DEMO_SERVICE, severity=Severity.MINOR)
        handle = await start(ts_env.client, queue, policy, found)
        result = await handle.result()
    assert result.dry_run and result.phase == Phase.RECOVERED
    assert demo_service.pid() == pid
    actions = [e.reason for e in result.timeline if e.kind == "action"]
    assert actions and actions[0].startswith(f"[dry-run] restart: dry-run: would stop pid {pid}")
    assert "[dry-run: actions are simulated]" in result.timeline[0].reason
    assert static_summary(found, dry_run=result.dry_run).endswith("[dry-run]")  # the UI's summary


def test_global_dry_run_applies_to_every_service(webhook_receiver: WebhookReceiver) -> None:
    one = scripted_policy(webhook_receiver.url).model_dump(mode="json", exclude={"fleet"})
    data: dict[str, Any] = {"dry_run": True, "services": [one, {**one, "name": "payments"}]}
    assert all(service.dry_run for service in PolicyFile.model_validate(data).services)
    data["dry_run"] = False
    assert not any(service.dry_run for service in PolicyFile.model_validate(data).services)


async def test_secrets_never_reach_history_or_logs(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
    webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    secret_url = f"{webhook_receiver.url}/T0KEN-7f3a9c2e51"
    hmac_secret = "hmac-s3cret-4d8e1b"
    monkeypatch.setenv("MEDKIT_TEST_HOOK_URL", secret_url)
    monkeypatch.setenv("MEDKIT_TEST_HOOK_HMAC", hmac_secret)
    route = {"kind": "webhook", "url_env": "MEDKIT_TEST_HOOK_URL",
             "hmac_secret_env": "MEDKIT_TEST_HOOK_HMAC"}
    policy = scripted_policy(webhook_receiver.url, routes={"oncall": route})
    script = Script()
    script.probe("http", False, False)  # assessment, and the check after the approval
    quiet_noisy_loggers()  # as every medkit process does through configure_logging
    caplog.set_level(logging.DEBUG)
    async with script.worker(ts_env.client, queue, deps):
        handle = await start(ts_env.client, queue, policy, detection(severity=Severity.CRITICAL))
        await wait_for_phase(handle, Phase.AWAITING_APPROVAL)
        await send_decision(ts_env.client, handle.id, DecisionKind.APPROVE, operator())
        assert (await handle.result()).phase == Phase.RECOVERED
        history = (await handle.fetch_history()).to_json()
        status = await handle.query(RecoveryWorkflow.status)
    assert webhook_receiver.events() == ["emergency", "approval_needed", "acknowledged", "recovered"]
    assert all("X-Medkit-Signature" in h for h in webhook_receiver.headers)
    captured = capsys.readouterr()
    texts = {"history": history, "history payloads": decoded_payloads(history),
             "logs": caplog.text, "stdout": captured.out, "stderr": captured.err,
             "status": json.dumps(status.model_dump(mode="json"))}
    for where, text in texts.items():
        for secret in ("T0KEN-7f3a9c2e51", hmac_secret):
            assert secret not in text, f"secret leaked into {where}"
    assert "MEDKIT_TEST_HOOK_URL" in texts["history payloads"]  # the name travels, not the value


def decoded_payloads(history_json: str) -> str:
    """Every payload in a history, base64-decoded, so a search sees what the UI would show."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value).decode(errors="replace"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(history_json))
    return "\n".join(found)


async def test_asking_again_for_a_lease_gets_the_same_answer_and_takes_no_second_slot(
    dev_env: WorkflowEnvironment, queue: str, deps: ActivityDeps,
    webhook_receiver: WebhookReceiver,
) -> None:
    """A lease request retried (say after a timeout) must neither double-book nor queue twice."""
    client = dev_env.client
    policy, _ = two_services(webhook_receiver.url)
    fleet = FleetActivities(client)
    first = LeaseRequest(request_id="first", service=policy.name, workflow_id="recovery:a",
                         run_id="run-a", task_queue=queue, limits=policy.fleet)
    second = first.model_copy(update={"request_id": "second", "workflow_id": "recovery:b",
                                      "run_id": "run-b"})
    async with running(build_worker(client, queue, deps, policy_file(policy))):
        granted = [await fleet.request_fleet_lease(first) for _ in range(2)]
        queued = [await fleet.request_fleet_lease(second) for _ in range(2)]
        state = await client.get_workflow_handle_for(
            FleetCoordinatorWorkflow.run, coordinator_workflow_id(queue)).query(
            FleetCoordinatorWorkflow.leases)
    assert [d.verdict for d in granted] == ["granted", "granted"]
    assert [d.verdict for d in queued] == ["queued", "queued"]
    assert queued[0].reason == queued[1].reason == "recovery:a is acting on checkout; queued at position 1"
    assert {service: r.request_id for service, r in state.holders.items()} == {"checkout": "first"}
    assert {service: [r.request_id for r in q] for service, q in state.waiting.items()} == {
        "checkout": ["second"]}


async def test_an_unreachable_http_action_is_a_failed_step_not_a_failed_recovery(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    """http actions run as local activities, whose failures reach workflow code unwrapped: the
    recovery must record the step as failed and hand over, never fail the whole run."""
    closed = f"http://127.0.0.1:{free_port()}/restart"
    ladder = [{"name": "poke", "steps": [{"action": "poke"}]}]
    own = own_service(tmp_path, actions={"poke": {"kind": "http", "url": closed}},
                      ladders={"minor": ladder, "major": ladder, "critical": ladder})
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, own, detection(service="svc"))
        status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, timeout=60)
        await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator("by hand"))
        assert (await handle.result()).phase == Phase.ABORTED
    failed = [e.reason for e in status.timeline if e.kind == "action"]
    assert failed[0].startswith("poke failed: ") and "ConnectError" in failed[0], failed
    assert failed[1:] == ["rung 'poke' stopped at step 1"]


async def test_a_failed_action_shows_as_failed_in_the_incident_record(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A step whose every attempt failed reads FAILED with its reason, never 'in progress'."""
    fail = "import sys; print('disk full'); sys.exit(3)"
    ladder = [{"name": "fix", "steps": [{"action": "fix"}]}]
    own = own_service(tmp_path, actions={"fix": {"kind": "command", "argv": [PY, "-c", fail]}},
                      ladders={"minor": ladder, "major": ladder, "critical": ladder})
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, own, detection(service="svc"))
        await wait_for_phase(handle, Phase.MANUAL_INTERVENTION, timeout=60)
        await send_decision(ts_env.client, handle.id, DecisionKind.ABORT, operator("by hand"))
        assert (await handle.result()).phase == Phase.ABORTED
    capsys.readouterr()
    code, shown, _ = run_cli(capsys, "incidents", "show", handle.id, "--state-dir", str(tmp_path))
    assert code == 0
    action_lines = [line for line in shown.splitlines() if "run_command" in line]
    assert len(action_lines) == 1, shown
    assert "FAILED (attempt 3): " in action_lines[0] and "exited 3: disk full" in action_lines[0]
    assert "in progress" not in shown
