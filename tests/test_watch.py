"""`medkit watch` end to end, and the anomaly watcher's push and Prometheus pull paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import structlog
import structlog.testing
import yaml
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from demo.policy import DEMO_SERVICE, demo_policy
from detectors.anomaly import AnomalyDetectorConfig
from detectors.anomaly_watch import AnomalyWatcher, PrometheusError, query_instant
from detectors.health_poller import Reporter
from detectors.watch import Watch
from models.detection import Detection
from models.policy import AnomalySeriesSpec, AnomalyWatchSpec, PolicyFile, ServicePolicy
from models.policy_yaml import parse_policy
from models.status import RecoveryStatus
from tests.conftest import DemoService, eventually
from tests.prometheus_fixture import PrometheusServer, running_prometheus
from workers.dev import reporter
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
        ready = max(warmed + 4, AnomalyDetectorConfig().min_history)  # a new series scores after
        await eventually(lambda: asyncio.sleep(0, series.points >= ready))
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


class FailingFirst:
    """The real reporter (signal-with-start on Temporal), except that its first call fails as
    when Temporal is unreachable."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.calls = 0
        self.delivered: list[Detection] = []

    async def __call__(self, detection: Detection, policy: ServicePolicy) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("Temporal unreachable")
        await self.report(detection, policy)
        self.delivered.append(detection)


async def test_a_detection_whose_report_failed_is_retried_until_delivered(
    dev_env: WorkflowEnvironment, demo_service: DemoService, tmp_path: Path
) -> None:
    """The detector is refractory after an alarm (scores halved for 200 points), so a failed
    report must be retried: waiting for the next anomalous point would lose the incident."""
    policy = watch_policy(demo_service, tmp_path)
    name = f"latency-{uuid.uuid4().hex[:8]}"
    report = FailingFirst(reporter(dev_env.client, f"retry-{uuid.uuid4()}"))
    spec = AnomalyWatchSpec.model_validate({"series": [
        {"name": name, "service": DEMO_SERVICE, "cooldown": "10m"}]})
    watcher = AnomalyWatcher(spec, {DEMO_SERVICE: policy.services[0]}, report)
    points = list(steady(300))
    for at, value in points:
        await watcher.observe(name, at, value)
    last = points[-1][0]
    assert (await watcher.observe(name, last + timedelta(minutes=1), 160.0)).fired
    assert report.calls == 1 and report.delivered == []
    pending = watcher.series[name].pending
    assert pending is not None
    after = await watcher.observe(name, last + timedelta(minutes=2), 100.0)
    assert not after.fired
    assert report.delivered == [pending] and watcher.series[name].pending is None
    for minute in range(3, 10):
        await watcher.observe(name, last + timedelta(minutes=minute), 100.0)
    assert report.calls == 2
    handle = dev_env.client.get_workflow_handle(f"recovery:{DEMO_SERVICE}:anomaly-{name}")
    try:
        assert (await handle.describe()).id == handle.id
    finally:
        await handle.terminate("test over")


class FakePrometheus:
    """A real HTTP server on loopback answering like Prometheus, or malformed as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests += 1
                query = parse_qs(urlparse(self.path).query)
                body = fake.answer(self.path.split("?")[0], query)
                data = json.dumps(body).encode()
                self.send_response(500 if fake.mode == "http500" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The base URL, with credentials in it (which medkit must never show)."""
        return f"http://admin:s3cret@127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, query: dict[str, list[str]]) -> Any:
        """A Prometheus API answer for the mode."""
        if path.endswith("query_range"):
            start, end, step = (float(query[k][0]) for k in ("start", "end", "step"))
            values = [[start + i * step, "10"] for i in range(int((end - start) / step))]
            return {"status": "success", "data": {"resultType": "matrix",
                                                  "result": [{"metric": {}, "values": values}]}}
        at = float(query["time"][0])
        return {
            "ok": {"status": "success", "data": {"resultType": "vector",
                                                 "result": [{"metric": {}, "value": [at, "10"]}]}},
            "matrix": {"status": "success", "data": {"resultType": "matrix",
                                                     "result": [{"metric": {}, "values": [[at, "1"]]}]}},
            "nodata": {"status": "success"},
            "nonnum": {"status": "success", "data": {"resultType": "vector",
                                                     "result": [{"metric": {}, "value": [at, "abc"]}]}},
            "string": {"status": "success", "data": {"resultType": "string", "result": [at, "hi"]}},
            "nullresult": {"status": "success", "data": {"resultType": "vector", "result": None}},
            "http500": {"status": "error", "error": "boom"},
        }[self.mode]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


MALFORMED = [
    ("matrix", "resultType 'matrix', expected a vector or scalar"),
    ("nodata", "no 'data' object"),
    ("nonnum", "malformed sample"),
    ("string", "resultType 'string', expected a vector or scalar"),
    ("nullresult", "result is NoneType, not a list"),
]


@pytest.mark.parametrize(("mode", "message"), MALFORMED)
async def test_a_malformed_prometheus_answer_is_a_prometheus_error(
    fake_prometheus: FakePrometheus, mode: str, message: str
) -> None:
    spec = AnomalySeriesSpec.model_validate({"name": "e", "service": DEMO_SERVICE,
                                             "prometheus": fake_prometheus.url, "query": "up"})
    fake_prometheus.mode = mode
    async with httpx.AsyncClient() as http:
        with pytest.raises(PrometheusError, match=re.escape(message)):
            await query_instant(http, spec, datetime.now(UTC))


async def test_a_prometheus_url_that_cannot_be_requested_is_an_error_without_its_password() -> None:
    """httpx quotes the piece of a URL it cannot read (here the password, read as a port since
    its "/" ended the authority); the error is logged, so it names neither."""
    valid = AnomalySeriesSpec.model_validate({"name": "e", "service": DEMO_SERVICE,
                                              "prometheus": "http://127.0.0.1:1", "query": "up"})
    spec = valid.model_copy(update={"prometheus": "http://admin:s3cr3t/pw@127.0.0.1:9090"})
    async with httpx.AsyncClient() as http:
        with pytest.raises(PrometheusError) as caught:
            await query_instant(http, spec, datetime.now(UTC))
    assert str(caught.value) == "http://***@127.0.0.1:9090/api/v1/query cannot be requested: Invalid port"


async def test_malformed_answers_are_logged_and_skipped_and_credentials_never_shown(
    fake_prometheus: FakePrometheus, demo_service: DemoService, tmp_path: Path
) -> None:
    """A malformed answer is one failed pull, like an unreachable Prometheus: the watcher keeps
    pulling (it used to raise KeyError/TypeError and end `medkit watch`)."""
    policy = watch_policy(demo_service, tmp_path)
    spec = AnomalyWatchSpec.model_validate({"series": [
        {"name": "e", "service": DEMO_SERVICE, "prometheus": fake_prometheus.url + "/?token=t0k",
         "query": "up", "interval": "50ms", "warmup": "2s"}]})
    watcher = AnomalyWatcher(spec, {DEMO_SERVICE: policy.services[0]}, Recorder())
    series = watcher.series["e"]
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(watcher.run())
        try:
            await eventually(lambda: asyncio.sleep(0, series.points > 0))
            for mode, _ in [*MALFORMED, ("http500", "")]:
                fake_prometheus.mode = mode
                seen = fake_prometheus.requests
                await eventually(lambda seen=seen: asyncio.sleep(0, fake_prometheus.requests >= seen + 2))
            assert not task.done()
            fake_prometheus.mode = "ok"
            points = series.points
            await eventually(lambda: asyncio.sleep(0, series.points >= points + 2))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    failed = [e["error"] for e in logs if e["event"] == "pull failed"]
    for _, message in MALFORMED:
        assert any(message in error for error in failed), message
    assert any("answered HTTP 500" in error for error in failed)
    assert all("s3cret" not in error and "t0k" not in error for error in failed)
    assert "http://***@127.0.0.1:" in failed[-1] and "token=***" in failed[-1]
    line = Watch(PolicyFile.model_validate({**policy.model_dump(), "anomaly": spec.model_dump()}),
                 Recorder()).describe()[-1]
    assert "s3cret" not in line and "http://***@127.0.0.1:" in line
    source = series.detection(datetime.now(UTC), 1.0, 0.9).labels["source"]
    assert source.startswith("up on http://***@127.0.0.1:") and source.endswith("/?token=***")


def test_a_watch_of_pushed_series_only_says_why_it_has_nothing_to_do(
    demo_service: DemoService, tmp_path: Path
) -> None:
    policy = watch_policy(demo_service, tmp_path, anomaly={"series": [
        {"name": "latency", "service": DEMO_SERVICE}]})
    data = policy.model_dump()
    data["services"][0]["health_poll"]["enabled"] = False
    watch = Watch(PolicyFile.model_validate(data), Recorder())
    assert watch.empty
    assert watch.why_empty() == (
        "health polling is disabled for every service and there is no host: section, and every "
        "anomaly: series is pushed (latency): medkit serve scores pushed series, not medkit watch")
    data.pop("anomaly")
    assert Watch(PolicyFile.model_validate(data), Recorder()).why_empty().endswith(
        "there is no host: section or anomaly: section")
