"""The worker's own policy file is the authority: a workflow input whose policy snapshot holds an
action, probe or route the worker does not define, or defines differently, runs nothing.

Anyone who can start workflows in the namespace writes the snapshot, so each test starts a real
RecoveryWorkflow (time-skipping server) with a forged snapshot against a real worker, and checks
that the forged program never ran, the forged endpoint was never called, and the recovery says why.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.phases import DecisionKind, Phase, Severity
from models.policy import PolicyFile, ServicePolicy
from models.status import RecoveryStatus
from tests.conftest import WebhookReceiver, policy_file, running
from tests.scripted import detection, start, wait_for_phase
from tests.test_recovery_paths import operator
from workers.client import send_decision
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

PY = sys.executable
TOUCH = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran')"
EXISTS = "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 1)"
DIGEST_PAIR = re.compile(r"requested spec digest [0-9a-f]{12}, worker's [0-9a-f]{12}\)")


def own_service(tmp_path: Path, **overrides: Any) -> ServicePolicy:
    """The worker's service `svc`: its probe passes once `fix` has written the `fixed` marker."""
    fixed = str(tmp_path / "fixed")
    ladder = [{"name": "fix", "steps": [{"action": "fix"}]}]
    data: dict[str, Any] = {
        "name": "svc",
        "probes": [{"kind": "command", "name": "fixed", "argv": [PY, "-c", EXISTS, fixed]}],
        "actions": {"fix": {"kind": "command", "argv": [PY, "-c", TOUCH, fixed]}},
        "ladders": {"minor": ladder, "major": ladder, "critical": ladder},
        "validation": {"samples": 1},
        "retry": {"max_attempts": 1},
        "escalation": {"max_escalations": 0},
        "routes": {"oncall": {"kind": "webhook", "url": "http://127.0.0.1:9/hook"}},
        "health_poll": {"enabled": False},
    }
    data.update(overrides)
    return PolicyFile.model_validate({"services": [data]}).services[0]


def forged(service: ServicePolicy, **changes: Any) -> ServicePolicy:
    """The same service as a forger would write it into a workflow input: fields replaced."""
    data = service.model_dump(mode="json", by_alias=True, exclude={"fleet"})
    data.update(changes)
    forgery = PolicyFile.model_validate({"services": [data]}).services[0]
    # The fleet limits as the worker's file stamps them (a one-service file would say size 1).
    return forgery if "fleet" in changes else forgery.model_copy(update={"fleet": service.fleet})


def ladders_of(action: str) -> dict[str, Any]:
    """Every severity's ladder: one rung running `action`."""
    ladder = [{"name": action, "steps": [{"action": action}]}]
    return {"minor": ladder, "major": ladder, "critical": ladder}


async def handed_to_a_human(client: Client,
                            handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus]) -> str:
    """Wait for ManualIntervention, return the reason it gave, and resolve it (a test ends with
    its recoveries done, so the time-skipping server is left clean)."""
    status = await wait_for_phase(handle, Phase.MANUAL_INTERVENTION)
    reason = status.timeline[-1].reason
    await send_decision(client, handle.id, DecisionKind.RESOLVE, operator())
    assert (await handle.result()).phase == Phase.RESOLVED
    return reason


async def refused_locally(client: Client,
                          handle: WorkflowHandle[RecoveryWorkflow, RecoveryStatus]) -> str:
    """The refusal of a local activity (probe rounds, http actions), as the recovery reports it:
    a hand-over to a human, never a failed workflow (a local activity's failure reaches workflow
    code unwrapped, and the recovery must catch it all the same)."""
    for _ in range(600):
        description = await handle.describe()
        assert description.status != WorkflowExecutionStatus.FAILED, "the recovery failed"
        status = await handle.query(RecoveryWorkflow.status)
        if status.phase == Phase.MANUAL_INTERVENTION:
            return await handed_to_a_human(client, handle)
        await asyncio.sleep(0.05)
    raise AssertionError("the recovery never reached ManualIntervention")


async def test_a_forged_command_action_never_runs_and_goes_to_a_human(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    own = own_service(tmp_path)
    marker = tmp_path / "pwned"
    evil = forged(own, actions={**own.model_dump(mode="json")["actions"],
                                "pwn": {"kind": "command", "argv": [PY, "-c", TOUCH, str(marker)]}},
                  ladders=ladders_of("pwn"))
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, evil, detection(service="svc"))
        reason = await handed_to_a_human(ts_env.client, handle)
    assert not marker.exists(), "the forged command ran"
    assert reason == ("the worker refused pwn: PolicyMismatch: action 'pwn' of service 'svc' is "
                      "unknown to the worker's policy file")


async def test_a_forged_http_action_in_a_local_activity_sends_nothing(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
    webhook_receiver: WebhookReceiver,
) -> None:
    """http actions run as local activities, which the worker's interceptors see too."""
    own = own_service(tmp_path)
    evil = forged(own, actions={**own.model_dump(mode="json")["actions"],
                                "leak": {"kind": "http", "url": webhook_receiver.url,
                                         "body": {"stolen": True}}},
                  ladders=ladders_of("leak"))
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, evil, detection(service="svc"))
        reason = await refused_locally(ts_env.client, handle)
    assert webhook_receiver.received == []
    assert reason.endswith("PolicyMismatch: action 'leak' of service 'svc' is unknown to the "
                           "worker's policy file")


async def test_an_altered_action_is_refused_and_the_worker_s_own_runs(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    own = own_service(tmp_path)
    altered_marker = tmp_path / "altered"
    altered = forged(own, actions={"fix": {"kind": "command",
                                           "argv": [PY, "-c", TOUCH, str(altered_marker)]}})
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        refused = await start(ts_env.client, queue, altered, detection(service="svc"))
        reason = await handed_to_a_human(ts_env.client, refused)
        assert not altered_marker.exists(), "the altered command ran"
        assert not (tmp_path / "fixed").exists()
        assert reason.startswith("the worker refused fix: PolicyMismatch: action 'fix' of service "
                                 "'svc' differs from the worker's policy file (")
        assert DIGEST_PAIR.search(reason), reason

        legit = await start(ts_env.client, queue, own, detection(service="svc"))
        result = await legit.result()
    assert result.phase == Phase.RECOVERED, [e.reason for e in result.timeline]
    assert (tmp_path / "fixed").read_text() == "ran"
    assert not any("policy file" in e.reason for e in result.timeline)


async def test_an_extra_command_probe_is_refused_before_it_runs(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    own = own_service(tmp_path)
    marker = tmp_path / "probed"
    probes = [*own.model_dump(mode="json")["probes"],
              {"kind": "command", "name": "sneaky", "argv": [PY, "-c", TOUCH, str(marker)]}]
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, forged(own, probes=probes),
                             detection(service="svc"))
        reason = await refused_locally(ts_env.client, handle)
    assert not marker.exists(), "the forged probe ran"
    assert reason.endswith("PolicyMismatch: probe 'sneaky' of service 'svc' is unknown to the "
                           "worker's policy file")


async def test_an_altered_command_probe_is_refused_before_it_runs(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    own = own_service(tmp_path)
    marker = tmp_path / "probed"
    probe = own.model_dump(mode="json")["probes"][0]
    swapped = [{**probe, "argv": [PY, "-c", TOUCH, str(marker)]}]
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, forged(own, probes=swapped),
                             detection(service="svc"))
        reason = await refused_locally(ts_env.client, handle)
    assert not marker.exists(), "the altered probe ran"
    assert "PolicyMismatch: probe 'fixed' of service 'svc' differs from the worker's policy file (" \
        in reason
    assert DIGEST_PAIR.search(reason), reason


async def test_a_forged_route_never_receives_a_notification(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
    webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forged route could carry a worker secret (say `hmac_secret_env`) to the forger's URL."""
    monkeypatch.setenv("MEDKIT_WEBHOOK_SECRET", "worker-s3cret")  # the forger names, never knows it
    own = own_service(tmp_path, escalation={"max_escalations": 0, "routes": ["oncall"]})
    evil = forged(own, routes={"oncall": {"kind": "webhook", "url": webhook_receiver.url,
                                          "hmac_secret_env": "MEDKIT_WEBHOOK_SECRET"}})
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, evil,
                             detection(service="svc", severity=Severity.CRITICAL))
        result = await handle.result()  # critical: on-call paged at once, and again at the end
    assert webhook_receiver.received == []
    failed = [e.reason for e in result.timeline if e.kind == "notification"]
    assert failed and all(
        reason.startswith("notification to oncall failed: PolicyMismatch: route 'oncall' of service "
                          "'svc' differs from the worker's policy file") for reason in failed), failed
    assert result.phase == Phase.RECOVERED  # the worker's own action still ran


async def test_a_worker_in_dry_run_refuses_a_real_action(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    own = own_service(tmp_path)
    worker_policy = policy_file(own.model_copy(update={"dry_run": True}))
    async with running(build_worker(ts_env.client, queue, deps, worker_policy)):
        handle = await start(ts_env.client, queue, own, detection(service="svc"))  # dry_run off
        reason = await handed_to_a_human(ts_env.client, handle)
    assert not (tmp_path / "fixed").exists(), "the action ran for real on a dry-run worker"
    assert reason == ("the worker refused fix: PolicyMismatch: action 'fix' of service 'svc' was "
                      "requested for real, but the worker's policy file puts the service in dry-run")


def test_medkit_worker_needs_its_policy_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MEDKIT_CONFIG"}
    argv = [str(Path(PY).parent / "medkit"), "worker", "--address", "127.0.0.1:1",
            "--state-dir", str(tmp_path / "state")]
    missing = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode != 0
    assert missing.stderr.strip() == ("medkit: the worker needs its own policy file, the authority "
                                      "over what it may run: pass --config FILE or set MEDKIT_CONFIG")
    bad = tmp_path / "policy.yaml"
    bad.write_text("services:\n  - name: svc\n")
    invalid = subprocess.run([*argv, "--config", str(bad)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert invalid.returncode != 0
    assert len(invalid.stderr.strip().splitlines()) == 1, invalid.stderr
    assert invalid.stderr.startswith(f"medkit: policy file {bad} is invalid: line 2: services[0]")


@pytest.mark.parametrize("forgery", ["approval dropped", "budget dropped", "more attempts"])
async def test_a_snapshot_that_loosens_the_safety_rules_runs_no_action(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path, forgery: str,
) -> None:
    """Every action spec is the worker's own, but the snapshot drops the approval its critical
    ladder requires, drops its budget, or allows more attempts: the worker compares the
    snapshot's safety digest (ladders, assessment, retry, budgets, exclusive, fleet) with its
    own and refuses, so the action never runs."""
    gated = [{"name": "fix", "steps": [{"action": "fix", "requires_approval": True}]}]
    own = own_service(tmp_path, ladders={**ladders_of("fix"), "critical": gated},
                      budgets=[{"actions": ["fix"], "max_actions": 1, "window": "1h"}])
    changes: dict[str, Any] = {
        "approval dropped": {"ladders": ladders_of("fix")},
        "budget dropped": {"budgets": []},
        "more attempts": {"retry": {"max_attempts": 5}},
    }[forgery]
    evil = forged(own, **changes)
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        severity = Severity.CRITICAL if forgery == "approval dropped" else None
        handle = await start(ts_env.client, queue, evil, detection(service="svc", severity=severity))
        reason = await handed_to_a_human(ts_env.client, handle)
    assert not (tmp_path / "fixed").exists(), "the action ran under a loosened snapshot"
    assert reason.startswith("the worker refused fix: PolicyMismatch: action 'fix' of service 'svc': "
                             "the recovery's policy snapshot differs from the worker's policy file")


async def test_a_lease_request_with_other_fleet_limits_is_refused(
    ts_env: WorkflowEnvironment, queue: str, deps: ActivityDeps, tmp_path: Path,
) -> None:
    """The fleet coordinator adopts the limits a lease request carries: a snapshot that lifts
    the blast-radius cap never reaches it, and nothing runs."""
    own = PolicyFile.model_validate({
        "services": [own_service(tmp_path).model_dump(mode="json", by_alias=True, exclude={"fleet"})],
        "fleet": {"max_services": 1},
    }).services[0]
    evil = own.model_copy(update={"fleet": own.fleet.model_copy(update={"max_services": 10})})
    async with running(build_worker(ts_env.client, queue, deps, policy_file(own))):
        handle = await start(ts_env.client, queue, evil, detection(service="svc"))
        reason = await refused_locally(ts_env.client, handle)
    assert not (tmp_path / "fixed").exists()
    assert "fleet limits in the lease request for 'svc' differ from the worker's policy file" in reason
