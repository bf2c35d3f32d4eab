"""The circuit-breaker toggle and staged recovery, against the real demo service."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.breaker import BreakerActivities
from activities.deps import ActivityDeps
from demo.policy import DEMO_SERVICE, demo_policy
from models.actions import ActionRequest, ActionResult
from models.detection import Detection
from models.phases import Phase, Severity
from models.policy import PolicyFile
from tests.conftest import DemoService, free_port, policy_file
from workers.client import start_or_join_recovery
from workers.worker import build_worker


@pytest.fixture
def deps(tmp_path: Path) -> ActivityDeps:
    """Real activity dependencies with a ledger in tmp."""
    return ActivityDeps.create(tmp_path / "state")


def breaker(url: str, state: str, **extra: Any) -> ActionRequest:
    """A breaker action request for the demo service."""
    return ActionRequest.model_validate({
        "workflow_id": "recovery:demo:t", "service": "demo", "action_name": f"breaker-{state}",
        "spec": {"kind": "breaker", "url": f"{url}/admin/breaker", "state": state, **extra},
        "reason": "test",
    })


def trial(base: str, trials: int = 3) -> dict[str, Any]:
    """Half-open trial settings probing the demo's normal endpoint."""
    return {"trial_probe": {"kind": "http", "name": "trial", "url": f"{base}/", "timeout": "1s"},
            "trials": trials, "trial_interval": "50ms"}


async def run(activities: BreakerActivities, request: ActionRequest, step: str) -> ActionResult:
    """Run set_breaker as step `step` of the recovery."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=step, activity_type="set_breaker")
    result: ActionResult = await env.run(activities.set_breaker, request)
    return result


def state(demo: DemoService) -> str:
    """The breaker position the demo reports."""
    return str(httpx.get(f"{demo.base}/admin/breaker", timeout=5).json()["state"])


async def test_open_sheds_traffic_and_half_open_trials_close_it(
    demo_service: DemoService, deps: ActivityDeps
) -> None:
    activities = BreakerActivities(deps)
    opened = await run(activities, breaker(demo_service.base, "open"), "1")
    shed = httpx.get(f"{demo_service.base}/", timeout=5).status_code
    closed = await run(activities, breaker(demo_service.base, "half_open", **trial(demo_service.base)), "2")
    assert opened.ok and opened.data == {"state": "open"} and shed == 503
    assert closed.data == {"state": "closed", "trials_passed": 3, "trials": 3}
    assert state(demo_service) == "closed"


async def test_failed_trial_reopens_the_breaker_and_fails_permanently(
    demo_service: DemoService, deps: ActivityDeps
) -> None:
    demo_service.inject("errors", error_rate=1.0)
    with pytest.raises(ApplicationError) as caught:
        await run(BreakerActivities(deps),
                  breaker(demo_service.base, "half_open", **trial(demo_service.base)), "1")
    assert caught.value.type == "BreakerTrialFailed" and caught.value.non_retryable
    assert "trial 1/3 failed" in str(caught.value)
    assert state(demo_service) == "open"


async def test_unreachable_target_skips_or_fails_as_configured(deps: ActivityDeps) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    skipped = await run(BreakerActivities(deps), breaker(base, "open", if_unreachable="skip"), "1")
    with pytest.raises(ApplicationError) as caught:
        await run(BreakerActivities(deps), breaker(base, "open"), "2")
    assert skipped.ok and "skipped" in skipped.detail
    assert caught.value.type == "Unreachable" and not caught.value.non_retryable


async def test_dry_run_and_replay(demo_service: DemoService, deps: ActivityDeps) -> None:
    request = breaker(demo_service.base, "half_open", **trial(demo_service.base, trials=2))
    dry = await run(BreakerActivities(deps), request.model_copy(update={"dry_run": True}), "1")
    assert dry.simulated and state(demo_service) == "closed"
    assert dry.detail == (f"dry-run: would set the breaker of 'demo' at {demo_service.base}/admin/"
                          "breaker to half_open, run 2 trial probe(s) 'trial', then close it if all "
                          "pass or re-open it")
    await run(BreakerActivities(deps), breaker(demo_service.base, "open"), "2")
    replayed = await run(BreakerActivities(deps), breaker(demo_service.base, "open"), "2")
    assert replayed.replayed


def test_trials_require_half_open() -> None:
    with pytest.raises(ValueError, match="trials only apply to state: half_open"):
        breaker("http://127.0.0.1:1", "closed", **trial("http://127.0.0.1:1"))


async def test_demo_major_ladder_runs_staged_recovery(
    ts_env: WorkflowEnvironment, demo_service: DemoService, tmp_path: Path
) -> None:
    policy = PolicyFile.model_validate(demo_policy(demo_service.port, tmp_path)).service(DEMO_SERVICE)
    policy.validation.samples = 1
    demo_service.inject("unhealthy")
    queue = f"breaker-{uuid.uuid4().hex[:8]}"
    detection = Detection(detection_id=str(uuid.uuid4()), service=DEMO_SERVICE,
                          incident_key=f"t-{uuid.uuid4().hex[:8]}", source="cli",
                          severity=Severity.MAJOR, detected_at=datetime.now(UTC))
    deps = ActivityDeps.create(tmp_path / "worker")
    async with build_worker(ts_env.client, queue, deps, policy_file(policy)):
        handle = await start_or_join_recovery(ts_env.client, detection, policy, queue)
        status = await handle.result()
    await deps.http.aclose()
    actions = [e.reason for e in status.timeline if e.kind == "action"]
    assert status.phase == Phase.RECOVERED, actions
    assert [a.split(":")[0] for a in actions] == ["breaker-open", "restart", "breaker-trial"]
    assert "3/3 half-open trials passed; closed" in actions[2]
    assert state(demo_service) == "closed"
