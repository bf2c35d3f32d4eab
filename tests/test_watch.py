"""`medkit watch` end to end, and the anomaly watcher's push and Prometheus pull paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from demo.policy import DEMO_SERVICE, demo_policy
from detectors.anomaly import AnomalyDetectorConfig
from detectors.anomaly_watch import AnomalyWatcher
from detectors.watch import Watch
from models.detection import Detection
from models.policy import AnomalySeriesSpec, AnomalyWatchSpec, PolicyFile, ServicePolicy
from models.policy_yaml import parse_policy
from models.status import RecoveryStatus
from tests.conftest import DemoService, eventually
from tests.prometheus_fixture import PrometheusServer, running_prometheus
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

BIN = Path(sys.executable).parent


class Recorder:
    """A reporter that keeps every detection it is given."""

    def __init__(self) -> None:
        self.detections: list[Detection] = []

    async def __call__(self, detection: Detection, policy: ServicePolicy) -> None:
        self.detections.append(detection)


def watch_policy(demo: DemoService, tmp_path: Path, **sections: Any) -> PolicyFile:
    """The demo policy, polled fast, plus any extra top-level sections."""
    data = demo_policy(demo.port, tmp_path)
    service = data["services"][0]  # type: ignore[index]
    service["health_poll"] = {"interval": "200ms", "failure_threshold": 2, "recovery_threshold": 2,
                              "cooldown": "1m"}
    return PolicyFile.model_validate({**data, **sections})


def test_detector_sections_must_name_known_services(demo_service: DemoService, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="names unknown service 'nope'"):
        watch_policy(demo_service, tmp_path, host={"service": "nope"})
    with pytest.raises(ValidationError, match="set both prometheus and query"):
        watch_policy(demo_service, tmp_path, anomaly={"series": [
            {"name": "x", "service": DEMO_SERVICE, "query": "up"}]})


def test_watch_describes_what_it_watches(demo_service: DemoService, tmp_path: Path) -> None:
    policy = watch_policy(demo_service, tmp_path, host={"service": DEMO_SERVICE, "disks": [{"path": "/"}]},
                          anomaly={"series": [
                              {"name": "errors", "service": DEMO_SERVICE, "prometheus": "http://127.0.0.1:1",
                               "query": "sum(rate(x[1m]))"},
                              {"name": "latency", "service": DEMO_SERVICE}]})
    lines = Watch(policy, Recorder()).describe()
    assert lines[0].startswith("health: demo every 0.2s, 3 probe(s); fires after 2 failed rounds")
    assert lines[1].startswith("host: cpu>95%, memory>90%, disk />90% (forecast) every 30s")
    assert lines[2] == "anomaly: errors (http://127.0.0.1:1 every 15s), threshold 0.5 -> service demo"
    assert lines[3] == ("anomaly: latency is pushed, so not here: medkit serve scores it "
                        "(POST /v1/series/latency/points) -> service demo")


def test_a_series_fires_by_default_at_the_detectors_own_alarm_level() -> None:
    """The level the NAB figures were measured at; 0.6 (the first detector's level) loses 14 points."""
    spec = AnomalySeriesSpec.model_validate({"name": "x", "service": DEMO_SERVICE})
    assert spec.threshold == AnomalyDetectorConfig().alarm_level


def steady(count: int, seed: int = 3) -> Iterator[tuple[datetime, float]]:
    """A minute-by-minute series around 100 with seeded noise."""
    rng = random.Random(seed)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for minute in range(count):
        yield start + timedelta(minutes=minute), 100 + rng.gauss(0, 1)


async def test_pushed_points_fire_once_on_an_anomaly(demo_service: DemoService, tmp_path: Path) -> None:
    policy = watch_policy(demo_service, tmp_path)
    report = Recorder()
    spec = AnomalyWatchSpec.model_validate({"series": [
        {"name": "latency", "service": DEMO_SERVICE, "threshold": 0.6, "cooldown": "10m"}]})
    watcher = AnomalyWatcher(spec, {DEMO_SERVICE: policy.services[0]}, report)
    points = list(steady(300))
    for at, value in points:
        assert not (await watcher.observe("latency", at, value)).fired
    last = points[-1][0]
    spike = await watcher.observe("latency", last + timedelta(minutes=1), 160.0)
    assert spike.fired and spike.score > 0.6
    again = await watcher.observe("latency", last + timedelta(minutes=2), 170.0)
    assert not again.fired
    [detection] = report.detections
    assert detection.service == DEMO_SERVICE and detection.source == "anomaly"
    assert detection.incident_key == "anomaly-latency"
    assert float(detection.labels["score"]) == pytest.approx(spike.score, abs=1e-3)
    assert detection.labels["recent_values"].endswith(", 160")
    assert len(detection.labels["recent_values"].split(", ")) == 10

    with pytest.raises(KeyError, match="unknown anomaly series 'nope'"):
        await watcher.observe("nope", last, 1.0)
    with pytest.raises(ValueError, match="is not after the last one"):
        await watcher.observe("latency", last, 1.0)


async def test_prometheus_series_is_warmed_up_and_fires_on_a_fault(
    demo_service: DemoService, tmp_path: Path
) -> None:
    with running_prometheus(tmp_path, [f"127.0.0.1:{demo_service.port}"]) as prometheus:
        prometheus.wait_for("count_over_time(demo_healthy[1m]) >= 4")
        await _pull_and_break(prometheus, demo_service, tmp_path)


async def _pull_and_break(prometheus: PrometheusServer, demo: DemoService, tmp_path: Path) -> None:
    policy = watch_policy(demo, tmp_path)
    report = Recorder()
    spec = AnomalyWatchSpec.model_validate({"series": [
        {"name": "healthy", "service": DEMO_SERVICE, "prometheus": prometheus.url,
         "query": "demo_healthy", "interval": "250ms", "warmup": "1m", "cooldown": "10m"}]})
    watcher = AnomalyWatcher(spec, {DEMO_SERVICE: policy.services[0]}, report)
    series = watcher.series["healthy"]
    task = asyncio.create_task(watcher.run())
    try:
        await eventually(lambda: asyncio.sleep(0, series.points >= 4))
        warmed = series.points
        await eventually(lambda: asyncio.sleep(0, series.points >= warmed + 4))
        assert report.detections == []
        demo.inject("unhealthy")
        await eventually(lambda: asyncio.sleep(0, report.detections))
        fired_at = series.points
        await eventually(lambda: asyncio.sleep(0, series.points >= fired_at + 6))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [detection] = report.detections
    assert detection.incident_key == "anomaly-healthy"
    assert detection.labels["value"] == "0"
    assert detection.labels["recent_values"].startswith("1, ")
    assert f"demo_healthy on {prometheus.url}" == detection.labels["source"]


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines `medkit watch` wrote to its stderr so far."""
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    return lines


def healthy_rounds(path: Path) -> int:
    """How many healthy probe rounds the watch has logged."""
    return sum(1 for e in log_lines(path) if e.get("event") == "probe round" and e.get("healthy"))


async def test_medkit_watch_starts_exactly_one_recovery_when_the_demo_breaks(
    dev_env: WorkflowEnvironment, demo_service: DemoService, tmp_path: Path
) -> None:
    client = dev_env.client
    task_queue = f"watch-{uuid.uuid4()}"
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(watch_policy(demo_service, tmp_path).model_dump(mode="json")))
    stderr = tmp_path / "watch.err"
    argv = [str(BIN / "medkit"), "watch", "--config", str(policy_file),
            "--address", client.service_client.config.target_host, "--namespace", client.namespace,
            "--task-queue", task_queue, "--log-level", "DEBUG"]
    worker = build_worker(client, task_queue, ActivityDeps.create(tmp_path),
                          parse_policy(policy_file.read_text()))
    async with worker:
        with stderr.open("wb") as err:
            watch = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            await eventually(lambda: asyncio.sleep(0, healthy_rounds(stderr) >= 2), timeout=30)
            assert "watching health: demo every 0.2s" in stderr.read_text()
            demo_service.inject("unhealthy")
            workflow_id = f"recovery:{DEMO_SERVICE}:health"
            ours = f'WorkflowId = "{workflow_id}" AND TaskQueue = "{task_queue}"'

            async def completed() -> bool:  # other tests recover `demo` too: only count ours
                return bool([w async for w in client.list_workflows(
                    f'{ours} AND ExecutionStatus = "Completed"')])

            await eventually(completed, timeout=90, interval=0.2)
            seen = healthy_rounds(stderr)
            await eventually(lambda: asyncio.sleep(0, healthy_rounds(stderr) >= seen + 5), timeout=30)

            runs = [w async for w in client.list_workflows(ours)]
            assert len(runs) == 1
            handle = client.get_workflow_handle(workflow_id, run_id=runs[0].run_id)
            status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
            assert status.reports == 1
            assert status.outcome is not None
            fired = [e for e in log_lines(stderr) if e.get("event") == "service failing, reporting"]
            assert len(fired) == 1
        finally:
            watch.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(watch.wait, 20)
    assert code == 0
    assert "medkit watch stopped." in stderr.read_text()
