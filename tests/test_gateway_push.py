"""Pushed anomaly series through `medkit serve`: POST /v1/series/{name}/points on the real dev server.

Normal points score low; an anomalous burst fires one detection that starts exactly one recovery
(a real worker runs it); auth, unknown series, malformed and out-of-order batches are refused
whole with nothing scored; an unreachable Temporal answers 503 and keeps nothing of the batch.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from detectors.watch import Watch
from gateway.app import create_app
from gateway.auth import AuthConfig
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalGateway
from models.policy import AnomalySeriesSpec, PolicyFile
from models.status import RecoveryStatus
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN
from tests.conftest import eventually, free_port, running
from tests.test_gateway import service_policy
from workers.client import TemporalTarget
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

DETECTOR = {"Authorization": f"Bearer {DETECTOR_TOKEN}"}
START = datetime(2026, 1, 1, tzinfo=UTC)
NORMAL = 120
"""Enough minute points for the detector's running mean and spread (it scores from the third
point; its window is 1000, so every point is in it); none of them scores above 0.34."""


def normal(start: int = 0, count: int = NORMAL) -> list[dict[str, Any]]:
    """Deterministic points around 100, one a minute, bounded noise of +-1."""
    return [{"timestamp": (START + timedelta(minutes=i)).isoformat(), "value": 100 + ((i * 37) % 11 - 5) / 5}
            for i in range(start, start + count)]


def burst(start: int) -> list[dict[str, Any]]:
    """Three points far outside normal: the first scores ~1 and fires, the others are in cool-down."""
    return [{"timestamp": (START + timedelta(minutes=start + i)).isoformat(), "value": v}
            for i, v in enumerate((200.0, 210.0, 205.0))]


def policy(series: str) -> PolicyFile:
    """Service svc-a (its only probe hits a closed port and its ladders only wait, so a recovery
    waits in ManualIntervention), one pushed series on it and one pulled series."""
    return PolicyFile.model_validate({"version": 1, "services": [
        service_policy("svc-a", free_port())], "anomaly": {"series": [
        {"name": series, "service": "svc-a", "source": "push", "cooldown": "10m"},
        {"name": "pulled", "service": "svc-a", "source": "prometheus",
         "prometheus": "http://127.0.0.1:1", "query": "up"},
    ]}})


@dataclass
class Gateway:
    """An app on an in-process transport, its metrics, and the pushed series' points path."""

    http: httpx.AsyncClient
    metrics: GatewayMetrics
    path: str

    def metric(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def push(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST points (a list, one point, or raw text) with the detector token."""
        if isinstance(body, str):
            return await self.http.post(self.path, content=body, headers={
                **DETECTOR, "Content-Type": "application/json", **(headers or {})})
        return await self.http.post(self.path, json=body, headers=headers if headers is not None
                                    else DETECTOR)


@contextlib.asynccontextmanager
async def gateway_app(temporal: TemporalGateway, series: str,
                      policies: PolicyFile | None = None) -> AsyncIterator[Gateway]:
    """The gateway app for `policies` (default: `policy(series)`)."""
    metrics = GatewayMetrics()
    settings = GatewaySettings(policy=policies or policy(series),
                               auth=AuthConfig(DETECTOR_TOKEN, OPERATOR_TOKEN))
    app = create_app(settings, temporal, metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield Gateway(http, metrics, f"/v1/series/{series}/points")


def offline() -> TemporalGateway:
    """A gateway target on a closed port: any Temporal call fails with 503."""
    return TemporalGateway(TemporalTarget(address=f"127.0.0.1:{free_port()}", task_queue="nowhere"),
                           timeout=3)


def scores(response: httpx.Response) -> list[float]:
    """The per-point scores of a 200 answer."""
    assert response.status_code == 200, response.text
    return [p["score"] for p in response.json()["points"]]


async def runs_of(client: Client, workflow_id: str) -> int:
    """How many runs of the workflow id exist (running or not)."""
    return len([e async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")])


async def test_an_anomalous_burst_starts_exactly_one_recovery(dev_env: WorkflowEnvironment,
                                                              tmp_path: Path) -> None:
    series = f"lat-{uuid.uuid4().hex[:8]}"
    queue = f"push-{uuid.uuid4().hex[:8]}"
    temporal = TemporalGateway(TemporalTarget(task_queue=queue), timeout=10, client=dev_env.client)
    deps = ActivityDeps.create(tmp_path)
    policies = policy(series)  # the worker's and the gateway's: one file, as in production
    async with running(build_worker(dev_env.client, queue, deps, policies)), \
            gateway_app(temporal, series, policies) as gw:
        calm = await gw.push(normal())
        assert calm.status_code == 200, calm.text
        assert calm.json()["accepted"] == NORMAL and calm.json()["detections"] == 0
        assert not any(p["fired"] for p in calm.json()["points"])

        spike = await gw.push(burst(NORMAL))
        assert spike.status_code == 200, spike.text
        body = spike.json()
        assert body["detections"] == 1
        assert [p["fired"] for p in body["points"]] == [True, False, False]
        assert body["points"][0]["score"] > 0.6
        workflow_id = f"recovery:svc-a:anomaly-{series}"
        assert body["points"][0]["workflow_id"] == workflow_id
        assert body["points"][0]["outcome"] == "started"

        # Still inside the 10m cool-down: another anomalous point scores but fires nothing.
        again = await gw.push({"timestamp": (START + timedelta(minutes=NORMAL + 5)).isoformat(),
                               "value": 400.0})
        assert again.status_code == 200 and again.json()["detections"] == 0

        handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

        async def status() -> RecoveryStatus | None:
            try:
                return await handle.query(RecoveryWorkflow.status)
            except Exception:
                return None

        recovered = await eventually(status, timeout=30)
        assert recovered.service == "svc-a"
        assert await runs_of(dev_env.client, workflow_id) == 1
        assert gw.metric("medkit_gateway_series_points_received_total", series=series) == NORMAL + 4
        assert gw.metric("medkit_gateway_series_detections_fired_total", series=series,
                         service="svc-a") == 1
        assert gw.metric("medkit_gateway_recoveries_started_total", service="svc-a") == 1
        await handle.terminate("test finished")
    await deps.http.aclose()


async def test_tokens_are_checked_before_the_body() -> None:
    async with gateway_app(offline(), "lat") as gw:
        missing = await gw.push(normal(count=3), headers={})
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = await gw.push(normal(count=3), headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status_code == 401
        operator = await gw.push(normal(count=3), headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert operator.status_code == 403
        assert gw.metric("medkit_gateway_series_points_received_total", series="lat") == 0
        assert gw.metric("medkit_gateway_requests_rejected_total", route="detector",
                         reason="unauthorized") == 2


async def test_unknown_and_pulled_series_are_404() -> None:
    async with gateway_app(offline(), "lat") as gw:
        unknown = await gw.http.post("/v1/series/nope/points", json=normal(count=1), headers=DETECTOR)
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "unknown pushed series 'nope'; the policy's pushed series: lat"
        pulled = await gw.http.post("/v1/series/pulled/points", json=normal(count=1), headers=DETECTOR)
        assert pulled.status_code == 404 and "pulled from Prometheus" in pulled.json()["detail"]
        assert gw.metric("medkit_gateway_requests_rejected_total", route="detector",
                         reason="unknown_series") == 2


async def test_rejected_batches_score_nothing() -> None:
    """A following valid batch scores exactly as on a gateway that never saw the bad ones."""
    first, second = normal(0, 60), normal(60, 60)
    async with gateway_app(offline(), "lat") as gw, gateway_app(offline(), "lat") as clean:
        assert len(scores(await gw.push(first))) == 60
        assert len(scores(await clean.push(first))) == 60

        swapped = normal(60, 4)
        swapped[1], swapped[2] = swapped[2], swapped[1]
        response = await gw.push(swapped)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "nothing was accepted: points[2].timestamp: 2026-01-01T01:01:00+00:00 is not after "
            "points[1] (2026-01-01T01:02:00+00:00)")

        stale = await gw.push(normal(59, 2))
        assert stale.status_code == 422
        assert stale.json()["detail"] == (
            "nothing was accepted: points[0].timestamp: 2026-01-01T00:59:00+00:00 is not after "
            "the series' last point (2026-01-01T00:59:00+00:00)")

        not_finite = await gw.push('[{"timestamp": "2026-01-01T01:00:00Z", "value": 1},'
                                   ' {"timestamp": "2026-01-01T01:01:00Z", "value": NaN}]')
        assert not_finite.status_code == 422
        assert not_finite.json()["detail"] == "body.1.value: Input should be a finite number"

        missing = await gw.push([{"timestamp": "2026-01-01T01:00:00Z"}])
        assert missing.status_code == 422 and missing.json()["detail"] == "body.0.value: Field required"
        text = await gw.push([{"timestamp": "2026-01-01T01:00:00Z", "value": "12"}])
        assert text.status_code == 422
        assert text.json()["detail"] == "body.0.value: Input should be a valid number"
        empty = await gw.push([])
        assert empty.status_code == 422

        assert gw.metric("medkit_gateway_series_points_received_total", series="lat") == 60
        assert scores(await gw.push(second)) == scores(await clean.push(second))


async def test_unreachable_temporal_keeps_nothing_of_the_batch() -> None:
    """503 when a detection cannot be reported; the same batch re-sent fires again (not 422)."""
    async with gateway_app(offline(), "lat") as gw:
        assert len(scores(await gw.push(normal()))) == NORMAL
        for _ in range(2):
            response = await gw.push(burst(NORMAL))
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
        assert gw.metric("medkit_gateway_series_points_received_total", series="lat") == NORMAL
        assert gw.metric("medkit_gateway_series_detections_fired_total", series="lat", service="svc-a") == 0
        assert gw.metric("medkit_gateway_temporal_errors_total", kind="unavailable") == 2


def test_medkit_watch_skips_pushed_series() -> None:
    async def report(*_: object) -> None:
        raise AssertionError("nothing reports here")

    watch = Watch(policy("lat"), report)
    assert watch.anomaly is not None and list(watch.anomaly.series) == ["pulled"]
    assert [s.name for s in watch.pushed] == ["lat"]
    assert watch.describe()[-1] == ("anomaly: lat is pushed, so not here: medkit serve scores it "
                                    "(POST /v1/series/lat/points) -> service svc-a")


def test_source_fields_are_validated_per_field() -> None:
    with pytest.raises(ValidationError) as pulled:
        AnomalySeriesSpec.model_validate({"name": "x", "service": "s", "source": "prometheus"})
    assert [(e["loc"], e["msg"]) for e in pulled.value.errors()] == [
        (("prometheus",), "Value error, prometheus is required for a pulled series (source: prometheus)"),
        (("query",), "Value error, query is required for a pulled series (source: prometheus)")]
    with pytest.raises(ValidationError, match=r"a pushed series \(source: push\) takes no query"):
        AnomalySeriesSpec.model_validate({"name": "x", "service": "s", "source": "push", "query": "up"})
    assert AnomalySeriesSpec.model_validate({"name": "x", "service": "s"}).source == "push"
    legacy = {"name": "x", "service": "s", "prometheus": "http://p:9090", "query": "up"}
    assert AnomalySeriesSpec.model_validate(legacy).source == "prometheus"
