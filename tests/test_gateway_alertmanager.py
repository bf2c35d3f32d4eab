"""End to end with real Prometheus and Alertmanager: a rule fires, Alertmanager delivers the
webhook to `medkit serve`, one recovery starts; the target heals, the resolved notification
arrives and the recovery closes after validating with its own probes.

The demo policy here cannot fix the fault (its ladders only wait, and the injected fault is
sticky), so the recovery waits in ManualIntervention until the resolved notification arrives:
the only way it can end without a human is through the gateway's resolved report.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.phases import Outcome, Phase
from models.policy_yaml import parse_policy
from tests.alertmanager_fixture import running_alertmanager, running_gateway
from tests.conftest import DemoService, eventually
from tests.prometheus_fixture import running_prometheus
from workers.client import fetch_status
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

ALERT = "DemoUnhealthy"


def sticky_demo_policy(demo: DemoService) -> dict[str, Any]:
    """The demo service probed over HTTP; remediation only waits, so only healing ends it."""
    rung = [{"name": "wait", "steps": [{"wait": "100ms"}]}]
    return {"version": 1, "services": [{
        "name": "demo",
        "probes": [{"kind": "http", "name": "healthz", "url": f"{demo.base}/healthz", "timeout": "1s"}],
        "ladders": {"minor": rung, "major": rung, "critical": rung},
        "validation": {"samples": 1, "interval": "100ms"},
        "retry": {"max_attempts": 1, "initial_backoff": "100ms"},
        "escalation": {"after": "1h", "max_escalations": 0},
        "health_poll": {"enabled": False},
    }]}


def alert_rules(path: Path) -> Path:
    """`demo_healthy == 0` fires at once, labelled with the medkit service."""
    path.write_text(yaml.safe_dump({"groups": [{"name": "demo", "rules": [{
        "alert": ALERT, "expr": "demo_healthy == 0", "for": "0s",
        "labels": {"service": "demo", "severity": "warning"},
        "annotations": {"summary": "demo reports unhealthy"},
    }]}]}))
    return path


def started_count(gateway_url: str) -> float:
    """The gateway's recoveries-started counter for the demo service, read from /metrics."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('medkit_gateway_recoveries_started_total{service="demo"}'):
            return float(line.split()[-1])
    return 0.0


async def test_prometheus_alert_starts_one_recovery_and_resolved_closes_it(
        dev_env: WorkflowEnvironment, demo_service: DemoService, tmp_path: Path) -> None:
    client = dev_env.client
    task_queue = f"am-{uuid.uuid4().hex[:8]}"
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(sticky_demo_policy(demo_service)))
    workflow_id = f"recovery:demo:{ALERT}"
    address = client.service_client.config.target_host
    async with build_worker(client, task_queue, ActivityDeps.create(tmp_path / "state"),
                            parse_policy(policy_file.read_text())):
        with running_gateway(tmp_path, policy_file, address, task_queue) as gateway, \
                running_alertmanager(tmp_path, f"{gateway.url}/v1/alerts/alertmanager") as am, \
                running_prometheus(tmp_path, [f"127.0.0.1:{demo_service.port}"],
                                   rule_files=[alert_rules(tmp_path / "rules.yml")],
                                   alertmanagers=[f"127.0.0.1:{am.port}"]) as prometheus:
            prometheus.wait_for("demo_healthy == 1")
            demo_service.inject("unhealthy")

            async def manual() -> bool:
                try:
                    status = await fetch_status(client, workflow_id)
                except LookupError:
                    return False
                return status.phase == Phase.MANUAL_INTERVENTION
            await eventually(manual, timeout=60, interval=0.3)
            handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)
            description = await handle.describe()
            assert description.task_queue == task_queue
            assert started_count(gateway.url) == 1, gateway.log_tail()

            demo_service.inject("healthy")
            final = await eventually(_finished(handle), timeout=90, interval=0.3)
            assert final.outcome == Outcome.RECOVERED
            reasons = [entry.reason for entry in final.timeline]
            assert any("source reports resolved" in r for r in reasons), reasons
            assert reasons[-1] == "source reported resolved and validation passed"
            assert final.timeline[0].actor == "alertmanager"
            assert started_count(gateway.url) == 1
            runs = [w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
            assert len(runs) == 1


def _finished(handle: Any) -> Any:
    async def check() -> Any:
        status = await handle.query(RecoveryWorkflow.status)
        return status if status.outcome is not None else None
    return check
