"""The gateway's HTTP contract against the real Temporal dev server (ASGI app over httpx).

Alertmanager HA pairs and repeats join one recovery; resolved alerts only report; malformed
or unknown-service batches are rejected whole with nothing sent; an unreachable Temporal
answers 503; tokens separate detectors from operators; decisions return the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from gateway.app import create_app
from gateway.auth import AuthConfig, AuthConfigError
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalGateway
from models.policy import PolicyFile
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN, running_gateway, serve_env
from tests.conftest import eventually, free_port, start_dev_server
from workers.client import TemporalTarget
from workers.worker import build_worker
from workflows.recovery import RecoveryWorkflow

DETECTOR = {"Authorization": f"Bearer {DETECTOR_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def service_policy(name: str, down_port: int) -> dict[str, Any]:
    """A service whose only probe hits a closed port, and whose ladders only wait: every
    recovery fails validation and waits in ManualIntervention for a human or a resolved report."""
    rung = [{"name": "wait", "steps": [{"wait": "100ms"}]}]
    return {
        "name": name,
        "probes": [{"kind": "tcp", "name": "port", "port": down_port, "timeout": "1s"}],
        "ladders": {"minor": rung, "major": rung, "critical": rung},
        "validation": {"samples": 1, "interval": "100ms"},
        "retry": {"max_attempts": 1, "initial_backoff": "100ms"},
        "escalation": {"after": "1h", "max_escalations": 0},
        "health_poll": {"enabled": False},
    }


def two_services() -> dict[str, Any]:
    """Two services, both down."""
    return {"version": 1, "services": [service_policy("svc-a", free_port()),
                                       service_policy("svc-b", free_port())]}


def alert(alertname: str, service: str = "svc-a", status: str = "firing", fingerprint: str = "",
          severity: str = "warning", **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager sends it."""
    return {
        "status": status,
        "labels": {"alertname": alertname, "service": service, "severity": severity, **labels},
        "annotations": {"summary": f"{alertname} on {service}"},
        "startsAt": "2026-01-02T03:04:05.123456789Z",
        "endsAt": "2026-01-02T03:09:05Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
        "fingerprint": fingerprint or uuid.uuid5(uuid.NAMESPACE_DNS, alertname + service).hex[:16],
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A version-4 webhook payload around the alerts."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4", "groupKey": '{}:{alertname="x"}', "truncatedAlerts": 0, "status": status,
        "receiver": "medkit", "groupLabels": {"alertname": "grouped"},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


@dataclass
class Gateway:
    """An app instance, an HTTP client on it, its metrics, and its policy (a worker's too)."""

    http: httpx.AsyncClient
    metrics: GatewayMetrics
    task_queue: str
    policy: PolicyFile

    def metric(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def gateway_app(temporal: TemporalGateway, **settings: Any) -> AsyncIterator[Gateway]:
    """The ASGI app on an in-process httpx transport."""
    metrics = GatewayMetrics()
    config = GatewaySettings(policy=PolicyFile.model_validate(two_services()),
                             auth=AuthConfig(DETECTOR_TOKEN, OPERATOR_TOKEN), **settings)
    app = create_app(config, temporal, metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield Gateway(http=http, metrics=metrics, task_queue=temporal.target.task_queue,
                      policy=config.policy)


@pytest_asyncio.fixture
async def gateway(dev_env: WorkflowEnvironment) -> AsyncIterator[Gateway]:
    """The gateway on the dev server, with a task queue of its own (no worker unless a test runs one)."""
    target = TemporalTarget(task_queue=f"gw-{uuid.uuid4().hex[:8]}")
    async with gateway_app(TemporalGateway(target, timeout=10, client=dev_env.client)) as gw:
        yield gw


@pytest_asyncio.fixture
async def offline() -> AsyncIterator[Gateway]:
    """The gateway pointed at a closed port: any Temporal call would answer 503."""
    target = TemporalTarget(address=f"127.0.0.1:{free_port()}", task_queue="nowhere")
    async with gateway_app(TemporalGateway(target, timeout=3)) as gw:
        yield gw


async def exists(client: Client, workflow_id: str) -> bool:
    """Whether any run of the workflow id exists."""
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def terminate(client: Client, *workflow_ids: str) -> None:
    """Stop recoveries a test left running."""
    for workflow_id in workflow_ids:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).terminate("test cleanup")


async def test_ha_pair_posting_the_same_batch_concurrently_starts_exactly_one_recovery(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    name = f"HighLatency{uuid.uuid4().hex[:6]}"
    batch = notification(alert(name), alert(name, instance="second-replica-label"))
    workflow_id = f"recovery:svc-a:{name}"
    try:
        first, second = await asyncio.gather(
            gateway.http.post("/v1/alerts/alertmanager", json=batch, headers=DETECTOR),
            gateway.http.post("/v1/alerts/alertmanager", json=batch, headers=DETECTOR))
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        outcomes = [r["outcome"] for body in (first.json(), second.json()) for r in body["results"]]
        assert sorted(outcomes) == ["joined", "joined", "joined", "started"]
        assert {r["workflow_id"] for body in (first.json(), second.json())
                for r in body["results"]} == {workflow_id}
        assert gateway.metric("medkit_gateway_recoveries_started_total", service="svc-a") == 1
        assert gateway.metric("medkit_gateway_detections_deduplicated_total", source="alertmanager") == 3
        assert gateway.metric("medkit_gateway_detections_received_total",
                              source="alertmanager", status="firing") == 4

        again = await gateway.http.post("/v1/alerts/alertmanager", json=batch, headers=DETECTOR)
        assert [r["outcome"] for r in again.json()["results"]] == ["joined", "joined"]

        async def runs() -> int:
            found = [w async for w in dev_env.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
            return len(found)
        assert await eventually(runs) == 1
        description = await dev_env.client.get_workflow_handle(workflow_id).describe()
        assert description.task_queue == gateway.task_queue
    finally:
        await terminate(dev_env.client, workflow_id)


async def test_many_instances_of_one_alert_reach_the_recovery_in_one_call_and_all_count(
        gateway: Gateway, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """An Alertmanager group of 20 instances of one service reaches the recovery in one call,
    not 20 calls contending for one workflow; each alert is still answered and counted (the
    group's first alert first in the timeline), and a second POST meanwhile gets its own answers."""
    name = f"InstanceDown{uuid.uuid4().hex[:6]}"
    workflow_id = f"recovery:svc-a:{name}"
    group = notification(*(alert(name, instance=f"host-{i}", fingerprint=f"{i:016x}")
                           for i in range(20)))
    later = notification(*(alert(name, instance=f"host-{i}", fingerprint=f"{i:016x}")
                           for i in range(20, 25)))
    worker = build_worker(dev_env.client, gateway.task_queue, ActivityDeps.create(tmp_path),
                          gateway.policy)
    async with worker:
        try:
            first, second = await asyncio.gather(
                gateway.http.post("/v1/alerts/alertmanager", json=group, headers=DETECTOR),
                gateway.http.post("/v1/alerts/alertmanager", json=later, headers=DETECTOR))
            assert first.status_code == second.status_code == 202, (first.text, second.text)
            outcomes = [r["outcome"] for r in first.json()["results"] + second.json()["results"]]
            assert outcomes.count("started") == 1 and outcomes.count("joined") == 24
            assert [r["fingerprint"] for r in first.json()["results"]] == [f"{i:016x}" for i in range(20)]
            handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

            async def all_counted() -> bool:
                return (await handle.query(RecoveryWorkflow.status)).reports == 25
            await eventually(all_counted, timeout=30)
            signals = [event.workflow_execution_signaled_event_attributes.signal_name
                       async for event in handle.fetch_history_events()
                       if event.HasField("workflow_execution_signaled_event_attributes")]
            # One call for the whole group, and at most two for the later POST, depending on when
            # it arrives: not 25.
            assert len(signals) <= 3 and signals[0] == "report_batch", signals
            timeline = (await handle.query(RecoveryWorkflow.status)).timeline
            assert timeline[0].reason.startswith("alertmanager reported: ")
            joined = [e.reason for e in timeline if e.reason.startswith("duplicate report #")]
            assert len(joined) == 24 and joined[0].startswith("duplicate report #2 joined: ")
        finally:
            await terminate(dev_env.client, workflow_id)


async def test_resolved_alert_reports_to_the_recovery_and_decisions_get_verdicts(
        gateway: Gateway, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    name = f"Down{uuid.uuid4().hex[:6]}"
    workflow_id = f"recovery:svc-b:{name}"
    worker = build_worker(dev_env.client, gateway.task_queue, ActivityDeps.create(tmp_path),
                          gateway.policy)
    async with worker:
        try:
            started = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                              json=notification(alert(name, "svc-b")))
            assert started.json()["results"][0] == {
                "workflow_id": workflow_id, "outcome": "started",
                "fingerprint": alert(name, "svc-b")["fingerprint"]}

            async def phase() -> str:
                response = await gateway.http.get(f"/v1/recoveries/{workflow_id}", headers=OPERATOR)
                assert response.status_code == 200, response.text
                return str(response.json()["phase"])
            await eventually(lambda: _equals(phase, "ManualIntervention"), timeout=30)

            resolved = await gateway.http.post(
                "/v1/alerts/alertmanager", headers=DETECTOR,
                json=notification(alert(name, "svc-b", status="resolved")))
            assert resolved.status_code == 202
            assert resolved.json()["results"][0]["outcome"] == "resolved_reported"

            async def timeline() -> list[str]:
                response = await gateway.http.get(f"/v1/recoveries/{workflow_id}", headers=OPERATOR)
                return [e["reason"] for e in response.json()["timeline"]]
            reasons = await eventually(
                lambda: _matching(timeline, "still unhealthy after source resolved"), timeout=30)
            assert any("source reports resolved" in r for r in reasons)
            await eventually(lambda: _equals(phase, "ManualIntervention"), timeout=30)

            approve = await gateway.http.post(f"/v1/recoveries/{workflow_id}/approve", headers=OPERATOR,
                                              json={"operator": "alice", "reason": "looks fine"})
            assert approve.status_code == 409
            assert "cannot approve while the recovery is in ManualIntervention" in approve.json()["detail"]

            resolve = await gateway.http.post(f"/v1/recoveries/{workflow_id}/resolve", headers=OPERATOR,
                                              json={"operator": "alice", "reason": "fixed the disk"})
            assert resolve.status_code == 200, resolve.text
            assert resolve.json()["accepted"] is True
            assert resolve.json()["phase"] == "Resolved"
            status = (await gateway.http.get(f"/v1/recoveries/{workflow_id}", headers=OPERATOR)).json()
            assert status["outcome"] == "Resolved"
            assert any(e["actor"] == "alice" and e["kind"] == "decision" for e in status["timeline"])

            again = await gateway.http.post(f"/v1/recoveries/{workflow_id}/resolve", headers=OPERATOR,
                                            json={"operator": "alice"})
            assert again.status_code == 409
            assert "already ended as Resolved" in again.json()["detail"]

            unknown = f"recovery:svc-b:Nothing{uuid.uuid4().hex[:6]}"
            assert (await gateway.http.post(f"/v1/recoveries/{unknown}/abort", headers=OPERATOR,
                                            json={"operator": "alice"})).status_code == 404
            assert (await gateway.http.get(f"/v1/recoveries/{unknown}",
                                           headers=OPERATOR)).status_code == 404
        finally:
            await terminate(dev_env.client, workflow_id)


async def test_an_alert_resent_after_its_recovery_ended_starts_nothing(
        gateway: Gateway, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """Alertmanager resends a firing alert unchanged when its group changes: after the recovery
    it started has ended, that repeat is answered `repeat` and starts no second recovery, while
    another instance of the same alert in the same notification still starts one."""
    name = f"Resent{uuid.uuid4().hex[:6]}"
    workflow_id = f"recovery:svc-b:{name}"
    first = alert(name, "svc-b")
    worker = build_worker(dev_env.client, gateway.task_queue, ActivityDeps.create(tmp_path),
                          gateway.policy)
    async with worker:
        try:
            started = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                              json=notification(first))
            assert started.json()["results"][0]["outcome"] == "started"
            handle = dev_env.client.get_workflow_handle(workflow_id)
            await eventually(lambda: _equals(
                lambda: _phase(gateway, workflow_id), "ManualIntervention"), timeout=30)
            resolve = await gateway.http.post(f"/v1/recoveries/{workflow_id}/resolve",
                                              headers=OPERATOR, json={"operator": "alice"})
            assert resolve.json()["phase"] == "Resolved"
            await handle.result()  # closed, not only Resolved: until then a repeat joins it
            ended = (await handle.describe()).run_id

            resent = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                             json=notification(first))
            assert resent.status_code == 202, resent.text
            assert resent.json()["results"] == [{"workflow_id": workflow_id, "outcome": "repeat",
                                                 "fingerprint": first["fingerprint"]}]
            assert (await handle.describe()).run_id == ended, "no second recovery started"
            assert gateway.metric("medkit_gateway_detections_deduplicated_total",
                                  source="alertmanager") == 1

            other = alert(name, "svc-b", fingerprint="0123456789abcdef", instance="host-2")
            grouped = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                              json=notification(first, other))
            assert [r["outcome"] for r in grouped.json()["results"]] == ["repeat", "started"]
            assert (await handle.describe()).run_id != ended
        finally:
            await terminate(dev_env.client, workflow_id)


async def _phase(gateway: Gateway, workflow_id: str) -> str:
    response = await gateway.http.get(f"/v1/recoveries/{workflow_id}", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return str(response.json()["phase"])


async def _equals(read: Any, wanted: str) -> bool:
    return bool(await read() == wanted)


async def _matching(read: Any, fragment: str) -> list[str] | None:
    lines: list[str] = await read()
    return lines if any(fragment in line for line in lines) else None


async def test_resolved_alert_without_a_running_recovery_starts_nothing(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    name = f"Gone{uuid.uuid4().hex[:6]}"
    response = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                       json=notification(alert(name, status="resolved")))
    assert response.status_code == 202
    assert response.json()["results"][0]["outcome"] == "no_recovery"
    assert not await exists(dev_env.client, f"recovery:svc-a:{name}")
    assert gateway.metric("medkit_gateway_resolved_ignored_total", source="alertmanager") == 1


async def test_a_resolved_alert_next_to_the_same_incident_still_firing_is_superseded(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    name = f"Flap{uuid.uuid4().hex[:6]}"
    batch = notification(alert(name, instance="a"), alert(name, status="resolved", instance="b",
                                                          fingerprint="00000000000000bb"))
    try:
        response = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR, json=batch)
        assert [r["outcome"] for r in response.json()["results"]] == ["started", "superseded"]
    finally:
        await terminate(dev_env.client, f"recovery:svc-a:{name}")


async def test_unknown_service_rejects_the_whole_batch_and_sends_nothing(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    name = f"Mixed{uuid.uuid4().hex[:6]}"
    batch = notification(alert(name, "svc-a"), alert(name, "payments"))
    response = await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR, json=batch)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        f"nothing was accepted: alerts[1] ({name}): unknown service 'payments'; "
        "the policy defines: svc-a, svc-b")
    assert not await exists(dev_env.client, f"recovery:svc-a:{name}")
    assert gateway.metric("medkit_gateway_requests_rejected_total",
                          route="detector", reason="unknown_service") == 1


def _without(key: str) -> dict[str, Any]:
    body = notification(alert("X"))
    del body[key]
    return body


def _alert_with(**changes: Any) -> dict[str, Any]:
    one = alert("X")
    one.update(changes)
    return notification(one)


def _alert_without(key: str) -> dict[str, Any]:
    one = alert("X")
    del one[key]
    return notification(one)


MALFORMED: list[tuple[Any, str]] = [
    (_without("alerts"), "body.alerts: Field required"),
    ({**notification(alert("X")), "version": "3"}, "body.version: Input should be '4'"),
    ({**notification(alert("X")), "alerts": []}, "body.alerts: List should have at least 1 item"),
    (_alert_without("fingerprint"), "body.alerts.0.fingerprint: Field required"),
    (_alert_with(labels=["service", "svc-a"]), "body.alerts.0.labels: Input should be a valid dictionary"),
    (_alert_with(status="pending"), "body.alerts.0.status: Input should be 'firing' or 'resolved'"),
    (_alert_with(startsAt="yesterday"), "body.alerts.0.startsAt: Input should be a valid datetime"),
    (_alert_with(labels={"alertname": "X"}), "none of the labels service, job is set"),
    ([1, 2], "body: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
async def test_malformed_payload_gets_a_precise_422_before_temporal_is_touched(
        offline: Gateway, body: Any, message: str) -> None:
    response = await offline.http.post("/v1/alerts/alertmanager", headers=DETECTOR, json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


async def test_not_json_and_too_large_bodies(offline: Gateway) -> None:
    response = await offline.http.post("/v1/alerts/alertmanager", content=b"{not json",
                                       headers={**DETECTOR, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error" in response.json()["detail"]
    huge = notification(*[alert(f"A{i}", fingerprint=f"{i:016x}") for i in range(2)])
    huge["commonAnnotations"] = {"blob": "x" * (1 << 20)}
    response = await offline.http.post("/v1/alerts/alertmanager", json=huge, headers=DETECTOR)
    assert response.status_code == 413
    assert response.json()["detail"].endswith("is larger than the limit of 1048576 bytes")

    async def chunks() -> AsyncIterator[bytes]:
        """The same body without a Content-Length, as a chunked upload sends it."""
        body = json.dumps(huge).encode()
        for start in range(0, len(body), 1 << 16):
            yield body[start:start + (1 << 16)]
    response = await offline.http.post("/v1/detections", content=chunks(), headers={
        **DETECTOR, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body sent in chunks is larger than the limit "
                                         "of 1048576 bytes"}


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 100_000, "body: not valid JSON: nested too deeply"),
    (b'{"service": "svc-\xff"}', "body: not valid JSON: not UTF-8 text"),
])
async def test_a_body_json_cannot_even_parse_is_the_same_422_as_any_malformed_body(
        offline: Gateway, body: bytes, message: str) -> None:
    """Bytes that are not UTF-8, or JSON nested deeper than the parser goes, used to get
    FastAPI's own 400 "There was an error parsing the body", uncounted, unlike every other
    malformed body (422 naming what is wrong, counted as `malformed`)."""
    for path in ("/v1/alerts/alertmanager", "/v1/detections"):
        response = await offline.http.post(path, content=body, headers={
            **DETECTOR, "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith(message), response.text
        assert response.json()["errors"][0]["loc"] == ["body"]
    assert offline.metric("medkit_gateway_requests_rejected_total",
                          route="detector", reason="malformed") == 2


async def test_temporal_unreachable_is_503_and_not_ready(offline: Gateway) -> None:
    """The 503 and /readyz say what is wrong in one plain line, as the CLI does (they used to
    carry the SDK's Rust debug string: "Failed client connect: Server connection error: ...")."""
    response = await offline.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                       json=notification(alert("Unreachable")))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    plain = re.fullmatch(r"cannot reach Temporal at 127\.0\.0\.1:\d+: connection refused: is the "
                         r"server running\?", response.json()["detail"])
    assert plain is not None, response.json()["detail"]
    assert (await offline.http.get("/healthz")).status_code == 200
    ready = await offline.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["detail"] == response.json()["detail"]
    assert ready.headers["Retry-After"] == "5", "every 503 says when to try again"
    response = await offline.http.get("/v1/recoveries", headers=OPERATOR)
    assert response.status_code == 503
    assert offline.metric("medkit_gateway_temporal_errors_total", kind="unavailable") == 2


@pytest.mark.parametrize("address", ["127.0.0.1:7233", "not an address"])
async def test_a_client_that_cannot_even_be_built_is_503_not_500(
    monkeypatch: pytest.MonkeyPatch, address: str,
) -> None:
    """A TLS file at a wrong path, or an address that is not one, fails before any connection:
    the gateway still answers 503 with the reason, not a 500 with a traceback."""
    if address == "127.0.0.1:7233":
        monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", "/nonexistent/client.pem")
        monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", "/nonexistent/client.key")
    target = TemporalTarget(address=address, task_queue="nowhere")
    async with gateway_app(TemporalGateway(target, timeout=3)) as broken:
        assert (await broken.http.get("/readyz")).status_code == 503
        response = await broken.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                          json=notification(alert("Unreachable")))
        assert response.status_code == 503
        detail = response.json()["detail"]
        if address == "not an address":
            assert detail.startswith("invalid Temporal address 'not an address' ("), detail
            assert detail.endswith("): expected host:port"), detail
        else:
            assert detail.startswith("cannot connect to Temporal at 127.0.0.1:7233: "), detail
        assert len(detail.splitlines()) == 1, detail


async def test_ready_when_temporal_answers(gateway: Gateway) -> None:
    assert (await gateway.http.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.parametrize(("method", "path", "headers", "status", "message"), [
    ("POST", "/v1/alerts/alertmanager", {}, 401, "missing bearer token"),
    ("POST", "/v1/alerts/alertmanager", {"Authorization": "Bearer nope"}, 401, "invalid bearer token"),
    ("POST", "/v1/alerts/alertmanager", {"Authorization": f"Basic {DETECTOR_TOKEN}"}, 401, "missing"),
    ("POST", "/v1/alerts/alertmanager", OPERATOR, 403, "the operator token cannot call detector"),
    ("POST", "/v1/detections", OPERATOR, 403, "the operator token cannot call detector"),
    ("GET", "/v1/recoveries", DETECTOR, 403, "the detector token cannot call operator"),
    ("POST", "/v1/recoveries/recovery:svc-a:x/abort", DETECTOR, 403, "the detector token cannot"),
    ("GET", "/v1/recoveries/recovery:svc-a:x", {"Authorization": "Bearer " + OPERATOR_TOKEN[:-1]},
     401, "invalid bearer token"),
])
async def test_tokens_separate_detectors_from_operators(
        offline: Gateway, method: str, path: str, headers: dict[str, str], status: int,
        message: str) -> None:
    response = await offline.http.request(method, path, headers=headers, json={"operator": "x"})
    assert response.status_code == status
    assert message in response.json()["detail"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_open_endpoints_need_no_token(offline: Gateway) -> None:
    assert (await offline.http.get("/healthz")).status_code == 200
    assert (await offline.http.get("/metrics")).status_code == 200
    spec = (await offline.http.get("/openapi.json")).json()
    assert "/v1/alerts/alertmanager" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_auth_configuration_is_refused_when_unsafe() -> None:
    with pytest.raises(AuthConfigError, match="--insecure-no-auth"):
        AuthConfig().validate()
    with pytest.raises(AuthConfigError, match="must differ"):
        AuthConfig(DETECTOR_TOKEN, DETECTOR_TOKEN).validate()
    with pytest.raises(AuthConfigError, match="at least 16"):
        AuthConfig("short").validate()
    with pytest.raises(AuthConfigError, match="conflicts"):
        AuthConfig(DETECTOR_TOKEN, insecure=True).validate()
    AuthConfig(insecure=True).validate()
    AuthConfig(operator_token=OPERATOR_TOKEN).validate()


def test_serve_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(two_services()))
    medkit = str(Path(sys.executable).parent / "medkit")
    result = subprocess.run([medkit, "serve", "--config", str(policy), "--port", str(free_port())],
                            env=serve_env(None, None), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--insecure-no-auth" in result.stderr


def test_tokens_read_from_files_with_a_trailing_newline_still_match(tmp_path: Path) -> None:
    """A token put in the environment from a file (a Kubernetes secret, an env file written by
    `echo`) ends in a newline; Alertmanager's `credentials_file` and curl send it without one.
    The gateway takes the token as its value without surrounding whitespace, so they match."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(two_services()))
    env = serve_env(f"{DETECTOR_TOKEN}\n", f" {OPERATOR_TOKEN}\r\n")
    with running_gateway(tmp_path, policy, f"127.0.0.1:{free_port()}", "nowhere", env=env) as gw:
        ingest = httpx.post(f"{gw.url}/v1/detections", headers=DETECTOR, timeout=10,
                            json={"service": "billing"})
        assert ingest.status_code == 422, ingest.text  # past auth: the service is unknown
        read = httpx.get(f"{gw.url}/v1/dashboard", headers=OPERATOR, timeout=30)
        assert read.status_code == 200, read.text
        wrong = httpx.get(f"{gw.url}/v1/dashboard", headers=DETECTOR, timeout=10)
        assert wrong.status_code == 403, wrong.text


async def test_operator_api_is_disabled_without_its_token(dev_env: WorkflowEnvironment) -> None:
    metrics = GatewayMetrics()
    settings = GatewaySettings(policy=PolicyFile.model_validate(two_services()),
                               auth=AuthConfig(detector_token=DETECTOR_TOKEN))
    app = create_app(settings, TemporalGateway(TemporalTarget(), client=dev_env.client), metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        response = await http.get("/v1/recoveries", headers=DETECTOR)
    assert response.status_code == 403
    assert "MEDKIT_OPERATOR_TOKEN is not set" in response.json()["detail"]


async def test_generic_detection_starts_joins_and_lists_with_filters(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    key = f"disk full {uuid.uuid4().hex[:6]}"
    body = {"service": "svc-b", "severity": "major", "summary": "disk 99%", "incident_key": key,
            "labels": {"category": "resource"}}
    workflow_id = f"recovery:svc-b:{key.replace(' ', '-')}"
    try:
        first = await gateway.http.post("/v1/detections", json=body, headers=DETECTOR)
        assert first.status_code == 202, first.text
        assert first.json() == {"workflow_id": workflow_id, "outcome": "started", "fingerprint": None}
        second = await gateway.http.post("/v1/detections", json=body, headers=DETECTOR)
        assert second.json()["outcome"] == "joined"

        unknown = await gateway.http.post("/v1/detections", headers=DETECTOR,
                                          json={**body, "service": "billing"})
        assert unknown.status_code == 422
        assert "unknown service 'billing'" in unknown.json()["detail"]

        async def listed() -> list[dict[str, Any]] | None:
            response = await gateway.http.get("/v1/recoveries", params={"service": "svc-b"},
                                              headers=OPERATOR)
            rows: list[dict[str, Any]] = response.json()
            return rows if any(r["workflow_id"] == workflow_id for r in rows) else None
        rows = await eventually(listed)
        assert {r["service"] for r in rows} == {"svc-b"}

        none = await gateway.http.get("/v1/recoveries", headers=OPERATOR,
                                      params={"service": "svc-b", "outcome": "Aborted", "phase": "Resolved"})
        assert none.status_code == 200
        assert all(r["workflow_id"] != workflow_id for r in none.json())
        for params in ({"phase": "Bogus"}, {"service": "a' OR 'x'='x"}, {"outcome": "'"},
                       {"limit": "0"}):
            bad = await gateway.http.get("/v1/recoveries", params=params, headers=OPERATOR)
            assert bad.status_code == 422, params

        text = (await gateway.http.get("/metrics")).text
        assert 'medkit_gateway_recoveries_started_total{service="svc-b"} 1.0' in text
        assert 'medkit_gateway_detections_deduplicated_total{source="http"} 1.0' in text
        assert 'medkit_gateway_requests_rejected_total{reason="unknown_service",route="detector"} 1.0' in text
        assert ('medkit_gateway_request_duration_seconds_count'
                '{method="POST",route="/v1/detections",status="202"} 2.0') in text
    finally:
        await terminate(dev_env.client, workflow_id)


async def test_detection_with_explicit_id_and_time_is_passed_through(
        gateway: Gateway, dev_env: WorkflowEnvironment) -> None:
    key = f"k{uuid.uuid4().hex[:6]}"
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    response = await gateway.http.post("/v1/detections", headers=DETECTOR, json={
        "service": "svc-a", "incident_key": key, "detection_id": "nightly-check-42",
        "detected_at": at.isoformat()})
    workflow_id = response.json()["workflow_id"]
    try:
        history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        payload = started.input.payloads[0].data.decode()
        assert '"detection_id":"nightly-check-42"' in payload
        assert '"source":"http"' in payload
        assert '"detected_at":"2026-03-04T05:06:07Z"' in payload
    finally:
        await terminate(dev_env.client, workflow_id)


async def test_a_decision_or_status_no_worker_answers_is_503_saying_so(
        dev_env: WorkflowEnvironment) -> None:
    """A recovery on a task queue no worker polls: the decision update used to escape as the
    SDK's cancellation error (a plain 500 with a traceback); now both endpoints answer a JSON
    503 naming the queue."""
    queue = f"gw-{uuid.uuid4().hex[:8]}"
    temporal = TemporalGateway(TemporalTarget(task_queue=queue), timeout=2, client=dev_env.client)
    async with gateway_app(temporal) as gateway:
        key = f"nobody-{uuid.uuid4().hex[:6]}"
        workflow_id = f"recovery:svc-a:{key}"
        try:
            started = await gateway.http.post("/v1/detections", headers=DETECTOR, json={
                "service": "svc-a", "severity": "major", "incident_key": key})
            assert started.status_code == 202, started.text
            wanted = f"no worker answered within 2s on task queue {queue!r} (no worker polls it"
            decided = await gateway.http.post(f"/v1/recoveries/{workflow_id}/abort",
                                              headers=OPERATOR, json={"operator": "alice"})
            assert decided.status_code == 503, decided.text
            assert decided.json()["detail"].startswith(f"abort: {wanted}")
            assert "the abort is not applied yet" in decided.json()["detail"]
            status = await gateway.http.get(f"/v1/recoveries/{workflow_id}", headers=OPERATOR)
            assert status.status_code == 503, status.text
            assert status.json()["detail"].startswith(f"status query: {wanted}")
            assert gateway.metric("medkit_gateway_temporal_errors_total", kind="unavailable") == 2
        finally:
            await terminate(dev_env.client, workflow_id)


async def test_a_decision_or_status_while_temporal_is_down_says_so_not_that_a_worker_is_missing(
        ) -> None:
    """Temporal stopping after the gateway connected: the update and the query then time out as
    they do when no worker answers, and were answered as such, with a worker hint and, for a
    decision, "Temporal keeps it pending", which is false: Temporal never got it. Both now
    name Temporal as what does not answer, and say to send the request again."""
    env = await start_dev_server()
    running = True
    try:
        address = env.client.service_client.config.target_host
        target = TemporalTarget(address=address, task_queue=f"gw-{uuid.uuid4().hex[:8]}")
        async with gateway_app(TemporalGateway(target, timeout=2)) as gateway:
            started = await gateway.http.post("/v1/detections", headers=DETECTOR, json={
                "service": "svc-a", "severity": "major", "incident_key": "outage"})
            assert started.status_code == 202, started.text
            await env.shutdown()
            running = False
            for response in (
                    await gateway.http.post("/v1/recoveries/recovery:svc-a:outage/abort",
                                            headers=OPERATOR, json={"operator": "alice"}),
                    await gateway.http.get("/v1/recoveries/recovery:svc-a:outage", headers=OPERATOR)):
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "5"
                detail = response.json()["detail"]
                assert f"Temporal at {address} does not answer" in detail, detail
                assert "no worker answered" not in detail and "keeps it pending" not in detail
                assert "send the request again once /readyz answers 200" in detail
    finally:
        if running:
            await env.shutdown()


async def test_a_namespace_temporal_does_not_have_is_named_not_taken_for_a_missing_recovery(
        dev_env: WorkflowEnvironment) -> None:
    """Connecting does not check the namespace. A wrong --namespace used to answer every status
    and decision with 404 "no recovery with id ...", dropped every resolved alert as
    `no_recovery` (202, so Alertmanager never retries it), and /readyz said ready. Every call
    now answers 502 naming the namespace, and /readyz is 503 saying why."""
    address = dev_env.client.service_client.config.target_host
    namespace = f"missing-{uuid.uuid4().hex[:6]}"
    target = TemporalTarget(address=address, namespace=namespace, task_queue="nowhere")
    wanted = f"namespace {namespace!r} not found on the Temporal server at {address}"
    async with gateway_app(TemporalGateway(target, timeout=5)) as gateway:
        ready = await gateway.http.get("/readyz")
        assert ready.status_code == 503 and wanted in ready.json()["detail"], ready.text
        assert ready.headers["Retry-After"] == "5"
        for response in (
                await gateway.http.get("/v1/recoveries/recovery:svc-a:x", headers=OPERATOR),
                await gateway.http.post("/v1/recoveries/recovery:svc-a:x/abort", headers=OPERATOR,
                                        json={"operator": "alice"}),
                await gateway.http.get("/v1/breakers/payments", headers=OPERATOR),
                await gateway.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                        json=notification(alert("Gone", status="resolved")))):
            assert response.status_code == 502, response.text
            assert wanted in response.json()["detail"]
        assert gateway.metric("medkit_gateway_resolved_ignored_total", source="alertmanager") == 0


async def test_a_recovery_terminated_in_temporal_refuses_decisions_saying_so(
        gateway: Gateway, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """A recovery someone terminated in the Temporal UI. After a worker ran it, a decision was
    refused as "already ended as ManualIntervention" (a phase, not an end); terminated before
    any worker ran it (a wrong --task-queue), the decision and the status were a 502 with
    Temporal's internal wording. Both now say the recovery was terminated: 409 for a decision,
    404 for the status it never had. The status of the one that ran showed it as open (its last
    phase, no outcome, a decision pending); it now says `closed_by_temporal` and waits for none."""
    ran, never_ran = (f"term-{uuid.uuid4().hex[:6]}" for _ in range(2))
    worker = build_worker(dev_env.client, gateway.task_queue, ActivityDeps.create(tmp_path),
                          gateway.policy)
    async with worker:
        started = await gateway.http.post("/v1/detections", headers=DETECTOR, json={
            "service": "svc-a", "severity": "major", "incident_key": ran})
        assert started.status_code == 202, started.text
        handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, f"recovery:svc-a:{ran}")

        async def in_manual_intervention() -> bool:
            return (await handle.query(RecoveryWorkflow.status)).phase.value == "ManualIntervention"
        await eventually(in_manual_intervention, timeout=30)
        await handle.terminate("stuck, ended by hand")
        status = await gateway.http.get(f"/v1/recoveries/recovery:svc-a:{ran}", headers=OPERATOR)
        assert status.status_code == 200, status.text
        shown = status.json()
        assert (shown["phase"], shown["closed_by_temporal"], shown["pending_decision"],
                shown["outcome"]) == ("ManualIntervention", "terminated", None, None), shown
        decided = await gateway.http.post(f"/v1/recoveries/recovery:svc-a:{ran}/retry",
                                          headers=OPERATOR, json={"operator": "alice"})
        assert decided.status_code == 409, decided.text
        assert decided.json()["detail"] == (
            "retry rejected: the recovery was terminated in Temporal (not ended by medkit), "
            "so it takes no more decisions")
    no_worker = TemporalGateway(TemporalTarget(task_queue=f"gw-{uuid.uuid4().hex[:8]}"), timeout=5,
                                client=dev_env.client)
    async with gateway_app(no_worker) as other:
        started = await other.http.post("/v1/detections", headers=DETECTOR, json={
            "service": "svc-a", "severity": "major", "incident_key": never_ran})
        assert started.status_code == 202, started.text
        await dev_env.client.get_workflow_handle(f"recovery:svc-a:{never_ran}").terminate("wrong queue")
        decided = await other.http.post(f"/v1/recoveries/recovery:svc-a:{never_ran}/abort",
                                        headers=OPERATOR, json={"operator": "alice"})
        assert decided.status_code == 409, decided.text
        assert "abort rejected: the recovery was terminated in Temporal" in decided.json()["detail"]
        status = await other.http.get(f"/v1/recoveries/recovery:svc-a:{never_ran}", headers=OPERATOR)
        assert status.status_code == 404, status.text
        assert status.json()["detail"] == (
            f"recovery 'recovery:svc-a:{never_ran}' was terminated in Temporal before any worker "
            "ran it, so it has no status (the Temporal UI shows its history)")
