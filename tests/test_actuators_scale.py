"""Scale actions: a real local process pool, the Kubernetes scale subresource (contract server),
a command template and a generic HTTP endpoint; each records the count it replaced."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.deps import ActivityDeps
from activities.process import ProcessSupervisor
from activities.process_pool import ProcessPool
from activities.scale import ScaleActivities
from models.actions import ActionRequest, ActionResult
from models.detection import Detection
from models.phases import Phase
from models.policy import PolicyFile
from tests.conftest import free_port, policy_file
from tests.test_actuators_servers import TOKEN, KubeApiServer, ScaleEndpoint, serving
from workers.client import start_or_join_recovery
from workers.worker import build_worker


@pytest.fixture
def deps(tmp_path: Path) -> ActivityDeps:
    """Real activity dependencies with a ledger in tmp."""
    return ActivityDeps.create(tmp_path / "state")


@pytest.fixture
def scale(deps: ActivityDeps) -> ScaleActivities:
    """The scale activities with a real process pool."""
    return ScaleActivities(deps, ProcessPool(deps.state_dir, ProcessSupervisor(deps.state_dir)))


def request(spec: dict[str, Any], dry_run: bool = False) -> ActionRequest:
    """A scale request for service svc."""
    return ActionRequest.model_validate({"workflow_id": "recovery:svc:t", "service": "svc",
                                         "action_name": "scale", "spec": spec, "reason": "test",
                                         "dry_run": dry_run})


async def run(fn: Any, spec: dict[str, Any], step: str, dry_run: bool = False) -> ActionResult:
    """Run a scale activity as step `step` (the same step again is a retry)."""
    req = request(spec, dry_run)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=step, workflow_id="recovery:svc:t",
                                   activity_type=req.spec.activity)
    result: ActionResult = await env.run(fn, req)
    return result


def healthy_ports(base_port: int, count: int) -> list[int]:
    """Which of the pool's ports answer /healthz."""
    up = []
    for port in range(base_port, base_port + count):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                up.append(port)
        except httpx.HTTPError:
            pass
    return up


def _free_range(count: int) -> int:
    while True:
        base = free_port()
        if base + count < 65535 and all(_free(p) for p in range(base, base + count)):
            return base


def _free(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


async def test_process_pool_scales_up_down_and_back_to_previous(
    scale: ScaleActivities, deps: ActivityDeps
) -> None:
    base = _free_range(3)
    spec: dict[str, Any] = {"kind": "scale_pool", "argv": [sys.executable, "-m", "demo.service", "--port",
                                                           "{port}"],
                            "base_port": base, "max_replicas": 3, "replicas": 2, "grace": "2s"}
    pool_dir = deps.state_dir / "pools" / "svc"
    try:
        up = await run(scale.scale_process_pool, spec, "1")
        assert healthy_ports(base, 3) == [base, base + 1]
        assert sorted(p.name for p in pool_dir.glob("*.pid")) == [f"{base}.pid", f"{base + 1}.pid"]
        pids = [int((pool_dir / f"{port}.pid").read_text()) for port in (base, base + 1)]
        down = await run(scale.scale_process_pool, {**spec, "replicas": 1}, "2")
        assert healthy_ports(base, 3) == [base]
        assert not psutil.pid_exists(pids[1]) or psutil.Process(pids[1]).status() == psutil.STATUS_ZOMBIE
        back = await run(scale.scale_process_pool, {**spec, "replicas": "previous"}, "3")
        assert healthy_ports(base, 3) == [base, base + 1]
        assert (up.data["previous_replicas"], up.data["replicas"]) == (0, 2)
        assert (down.data["previous_replicas"], down.data["replicas"]) == (2, 1)
        assert (back.data["previous_replicas"], back.data["replicas"]) == (1, 2)
    finally:
        await run(scale.scale_process_pool, {**spec, "replicas": 0}, "cleanup")
    assert healthy_ports(base, 3) == []
    assert list(pool_dir.glob("*.pid")) == []


async def test_kubernetes_scale_subresource_get_then_merge_patch(
    tmp_path: Path, scale: ScaleActivities
) -> None:
    api = KubeApiServer(port=free_port())
    api.add("prod", "deployment", "web", replicas=3)
    spec = {"kind": "kubernetes_scale", "name": "web", "replicas": 6,
            "kubeconfig": str(api.kubeconfig(tmp_path))}
    with serving(api):
        up = await run(scale.scale_kubernetes, spec, "1")
        retried = await run(scale.scale_kubernetes, spec, "1")
        back = await run(scale.scale_kubernetes, {**spec, "replicas": "previous"}, "2")
        with pytest.raises(ApplicationError) as missing:
            await run(scale.scale_kubernetes, {**spec, "name": "absent"}, "3")
    path = "/apis/apps/v1/namespaces/prod/deployments/web/scale"
    assert [(r.method, r.path) for r in api.requests[:2]] == [("GET", path), ("PATCH", path)]
    assert api.requests[1].content_type == "application/merge-patch+json"
    assert api.requests[1].body == {"spec": {"replicas": 6}}
    assert (up.data["previous_replicas"], up.data["replicas"]) == (3, 6) and retried.replayed
    assert (back.data["previous_replicas"], back.data["replicas"]) == (6, 3)
    assert api.objects[("prod", "deployments", "web")]["spec"]["replicas"] == 3
    assert missing.value.type == "NotFound" and missing.value.non_retryable


async def test_command_scale_substitutes_and_reads_the_count(
    tmp_path: Path, scale: ScaleActivities
) -> None:
    count = tmp_path / "replicas"
    count.write_text("4\n")
    spec = {"kind": "scale_command", "replicas": 7,
            "argv": [sys.executable, "-c", f"open({str(count)!r}, 'w').write('{{replicas}}')"],
            "current_argv": [sys.executable, "-c", f"print(open({str(count)!r}).read())"]}
    result = await run(scale.scale_command, spec, "1")
    dry = await run(scale.scale_command, {**spec, "replicas": "previous"}, "2", dry_run=True)
    assert count.read_text() == "7"
    assert (result.data["previous_replicas"], result.data["replicas"]) == (4, 7)
    assert dry.simulated and dry.data["replicas"] == 4 and count.read_text() == "7"
    assert dry.detail.startswith(f"dry-run: would scale command {sys.executable} to 4 (restoring")


@pytest.mark.parametrize("printed", ["-3", "three", ""])
async def test_command_scale_refuses_a_current_count_that_is_no_replica_count(
    tmp_path: Path, scale: ScaleActivities, printed: str
) -> None:
    """The count current_argv prints becomes previous_replicas, which `replicas: previous` later
    puts into the scale argv: `-3` was recorded as is (and would be passed as an option)."""
    count = tmp_path / "replicas"
    count.write_text("untouched")
    spec = {"kind": "scale_command", "replicas": 2,
            "argv": [sys.executable, "-c", f"open({str(count)!r}, 'w').write('{{replicas}}')"],
            "current_argv": [sys.executable, "-c", f"print({printed!r})"]}
    with pytest.raises(ApplicationError) as caught:
        await run(scale.scale_command, spec, "1")
    assert (caught.value.type, caught.value.non_retryable) == ("BadReplicaCount", True)
    assert caught.value.message == f"{sys.executable} printed {printed!r}, not a replica count"
    assert count.read_text() == "untouched"


@pytest.mark.parametrize(("current", "shown"), [(-2, "-2"), (True, "True")])
async def test_http_scale_refuses_a_current_count_that_is_no_replica_count(
    scale: ScaleActivities, monkeypatch: pytest.MonkeyPatch, current: int, shown: str
) -> None:
    """A negative count or a JSON `true` (a Python int) was recorded as previous_replicas."""
    monkeypatch.setenv("SCALE_TOKEN", TOKEN)
    endpoint = ScaleEndpoint(port=free_port(), replicas=current)
    spec = {"kind": "scale_http", "url": endpoint.url, "replicas": 5, "bearer_token_env": "SCALE_TOKEN",
            "current_url": endpoint.url, "replicas_field": "pool.replicas"}
    with serving(endpoint), pytest.raises(ApplicationError) as caught:
        await run(scale.scale_http, spec, "1")
    assert (caught.value.type, caught.value.non_retryable) == ("BadReplicaCount", True)
    assert caught.value.message == (f"GET {endpoint.url}: pool.replicas is {shown}, "
                                    "not a replica count")
    assert [r.method for r in endpoint.requests] == ["GET"]


async def test_previous_refuses_a_count_recorded_before_counts_were_checked(
    tmp_path: Path, deps: ActivityDeps, scale: ScaleActivities
) -> None:
    """A ledger written by an older worker may hold previous_replicas -3; restoring it ran the
    scale argv with "-3" in it."""
    count = tmp_path / "replicas"
    count.write_text("untouched")
    argv = [sys.executable, "-c", f"open({str(count)!r}, 'w').write('{{replicas}}')"]
    key = "recovery:svc:t/old-run/1"
    deps.ledger.begin(key, workflow_id="recovery:svc:t", service="svc", activity="scale_command")
    deps.ledger.progress(key, target=f"command {sys.executable}", restore=False,
                         previous_replicas=-3, replicas=2)
    deps.ledger.finish(key, "{}")
    with pytest.raises(ApplicationError) as caught:
        await run(scale.scale_command, {"kind": "scale_command", "replicas": "previous", "argv": argv}, "2")
    assert (caught.value.type, caught.value.non_retryable) == ("BadReplicaCount", True)
    assert count.read_text() == "untouched"


async def test_previous_without_a_recorded_scale_is_permanent(scale: ScaleActivities) -> None:
    spec = {"kind": "scale_command", "replicas": "previous", "argv": ["true", "{replicas}"]}
    with pytest.raises(ApplicationError) as caught:
        await run(scale.scale_command, spec, "1")
    assert caught.value.type == "NoPreviousReplicas" and caught.value.non_retryable


async def test_http_scale_through_a_real_recovery_run(
    ts_env: WorkflowEnvironment, deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALE_TOKEN", TOKEN)
    endpoint = ScaleEndpoint(port=free_port(), replicas=3)
    spec = {"kind": "scale_http", "url": endpoint.url, "replicas": 5, "bearer_token_env": "SCALE_TOKEN",
            "current_url": endpoint.url, "replicas_field": "pool.replicas"}
    policy = PolicyFile.model_validate({"services": [{
        "name": "svc", "probes": [{"kind": "tcp", "name": "up", "port": endpoint.port}],
        "actions": {"scale-out": spec},
        "ladders": {s: [{"name": "scale-out", "steps": [{"action": "scale-out"}]}]
                    for s in ("minor", "major", "critical")},
        "validation": {"samples": 1}, "retry": {"max_attempts": 1},
    }]}).services[0]
    queue = f"scale-{uuid.uuid4().hex[:8]}"
    detection = Detection(detection_id=str(uuid.uuid4()), service="svc",
                          incident_key=f"scale-{uuid.uuid4().hex[:8]}", source="cli",
                          detected_at=datetime.now(UTC))
    with serving(endpoint):
        async with build_worker(ts_env.client, queue, deps, policy_file(policy)):
            handle = await start_or_join_recovery(ts_env.client, detection, policy, queue)
            status = await handle.result()
    assert status.phase == Phase.RECOVERED
    assert endpoint.replicas == 5
    assert [(r.method, r.body) for r in endpoint.requests] == [("GET", None), ("PUT", {"replicas": 5})]
    assert any("scaled " + endpoint.url + " from 3 to 5" in e.reason for e in status.timeline)
