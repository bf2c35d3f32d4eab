"""Input bounds of `medkit serve`, against the real app (and the real Temporal dev server where a
call is made): oversized alerts are refused with a 422 naming them, never a 503 that Alertmanager
would retry forever; reports piling up for one recovery go in calls Temporal accepts; a request
Temporal refuses for its size is a 413; a pushed point from the far future or of absurd magnitude
is refused instead of wedging or blinding its series.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from gateway.alertmanager import MAX_ANNOTATION_VALUE
from gateway.schemas import MAX_LABEL_VALUE, MAX_LABELS
from gateway.series import MAX_CLOCK_SKEW
from gateway.temporal import TemporalGateway, TemporalPayloadTooLarge
from models.detection import MAX_REPORT_BATCH_BYTES, Detection
from models.policy import PolicyFile
from tests.test_gateway import DETECTOR, Gateway, alert, gateway_app, notification, terminate, two_services
from tests.test_gateway_push import gateway_app as push_app
from tests.test_gateway_push import normal, scores
from tests.test_gateway_push import offline as unreachable_temporal
from workers.client import TemporalTarget
from workflows.recovery import RecoveryWorkflow


@pytest_asyncio.fixture
async def online(dev_env: WorkflowEnvironment) -> AsyncIterator[Gateway]:
    """The gateway on the dev server, on a task queue no worker polls."""
    target = TemporalTarget(task_queue=f"bounds-{uuid.uuid4().hex[:8]}")
    async with gateway_app(TemporalGateway(target, timeout=10, client=dev_env.client)) as gw:
        yield gw


@pytest_asyncio.fixture
async def offline() -> AsyncIterator[Gateway]:
    """The gateway pointed at a closed port: anything that reached Temporal would answer 503."""
    async with gateway_app(unreachable_temporal()) as gw:
        yield gw


def with_labels(name: str, count: int, size: int, **extra: str) -> dict[str, Any]:
    """An alert carrying `count` extra labels of `size` characters each."""
    one = alert(name, **extra)
    one["labels"].update({f"l{i:02d}": chr(ord("a") + i % 26) * size for i in range(count)})
    return one


OVERSIZED: list[tuple[str, dict[str, Any], str]] = [
    ("a 900 KB label", {"labels": {"blob": "x" * 900_000}},
     f"body.alerts.0.labels.blob: String should have at most {MAX_LABEL_VALUE} characters"),
    ("too many labels", {"labels": {f"k{i}": "v" for i in range(MAX_LABELS)}},
     f"body.alerts.0.labels: Dictionary should have at most {MAX_LABELS} items"),
    ("a 201-character label name", {"labels": {"n" * 201: "v"}},
     "body.alerts.0.labels." + "n" * 61 + "....[key]: String should have at most 200 characters"),
    ("a 900 KB annotation", {"annotations": {"description": "x" * 900_000}},
     f"body.alerts.0.annotations.description: String should have at most {MAX_ANNOTATION_VALUE}"),
]


@pytest.mark.parametrize(("case", "change", "message"), OVERSIZED, ids=[c[0] for c in OVERSIZED])
async def test_an_oversized_alert_is_422_naming_it_before_temporal_is_touched(
        offline: Gateway, case: str, change: dict[str, Any], message: str) -> None:
    """Temporal is unreachable here, so anything but a 422 would be a 503, which Alertmanager
    retries forever; the other alert of the notification is not sent either."""
    big = alert("Big", fingerprint="00000000000000b1")
    for key, values in change.items():
        big[key] = {**big[key], **values}
    response = await offline.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                       json=notification(alert("Small"), big))
    assert response.status_code == 422, response.text[:300]
    assert response.json()["detail"].replace("alerts.1", "alerts.0").startswith(message)
    assert offline.metric("medkit_gateway_requests_rejected_total", route="detector",
                          reason="malformed") == 1
    assert offline.metric("medkit_gateway_temporal_errors_total", kind="unavailable") == 0


async def test_a_detection_with_too_many_labels_is_422(offline: Gateway) -> None:
    response = await offline.http.post("/v1/detections", headers=DETECTOR, json={
        "service": "svc-a", "labels": {f"k{i}": "v" for i in range(MAX_LABELS + 1)}})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body.labels: Dictionary should have at most 64 items")


@pytest.mark.parametrize("starts", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
async def test_an_alert_time_outside_the_calendar_in_utc_is_422_not_a_crash(
        offline: Gateway, starts: str) -> None:
    one = alert("Edge")
    one["startsAt"] = starts
    response = await offline.http.post("/v1/alerts/alertmanager", headers=DETECTOR,
                                       json=notification(one))
    assert response.status_code == 422
    assert response.json()["detail"] == ("body.alerts.0.startsAt: Value error, the time in UTC is "
                                         "outside years 1-9999")


async def test_reports_piling_up_for_one_recovery_go_in_calls_temporal_accepts(
        online: Gateway, dev_env: WorkflowEnvironment) -> None:
    """Eight notifications of six large alerts each (60 labels of 1900 characters: each alert is
    well within the label bounds) for one recovery, at once: about 5.6 MB of reports that used to
    be coalesced into calls Temporal refused (gRPC's 4 MB limit), answered 503 and retried
    forever. Every alert is accepted and reaches the recovery, in calls of at most
    MAX_REPORT_BATCH_BYTES."""
    name = f"Heavy{uuid.uuid4().hex[:6]}"
    workflow_id = f"recovery:svc-a:{name}"
    posts = [notification(*(with_labels(name, 60, 1900, instance=f"host-{n}-{i}")
                            | {"fingerprint": f"{n:08x}{i:08x}"} for i in range(6)))
             for n in range(8)]
    assert all(len(json.dumps(body)) < 1 << 20 for body in posts)
    try:
        responses = await asyncio.gather(*(
            online.http.post("/v1/alerts/alertmanager", headers=DETECTOR, json=body) for body in posts))
        assert [r.status_code for r in responses] == [202] * 8, [r.text[:200] for r in responses]
        outcomes = [result["outcome"] for r in responses for result in r.json()["results"]]
        assert sorted(outcomes) == ["joined"] * 47 + ["started"]

        handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)
        delivered: list[str] = []
        async for event in handle.fetch_history_events():
            if not event.HasField("workflow_execution_signaled_event_attributes"):
                continue
            signal = event.workflow_execution_signaled_event_attributes
            [payload] = signal.input.payloads
            assert len(payload.data) <= MAX_REPORT_BATCH_BYTES + 1024, signal.signal_name
            body = json.loads(payload.data)
            batch = body["detections"] if signal.signal_name == "report_batch" else [body]
            delivered += [d["labels"]["instance"] for d in batch]
        assert sorted(delivered) == sorted(f"host-{n}-{i}" for n in range(8) for i in range(6))
    finally:
        await terminate(dev_env.client, workflow_id)


def oversized(detection_id: str, size: int) -> Detection:
    """A detection far beyond the gateway's label bounds, as only a bug could build one."""
    return Detection(detection_id=detection_id, service="svc-a", incident_key=f"huge-{detection_id}",
                     source="http", labels={"blob": "x" * size}, detected_at=datetime.now(UTC))


async def test_a_request_temporal_refuses_for_its_size_is_too_large_not_unavailable(
        dev_env: WorkflowEnvironment) -> None:
    """The two ways the server refuses a request for its size (gRPC's 4 MB message limit, and
    Temporal's 2 MB blob limit) are not "Temporal unavailable": retrying cannot help."""
    temporal = TemporalGateway(TemporalTarget(task_queue=f"bounds-{uuid.uuid4().hex[:8]}"),
                               timeout=10, client=dev_env.client)
    policy = PolicyFile.model_validate(two_services()).services[0]
    key = uuid.uuid4().hex[:8]
    with pytest.raises(TemporalPayloadTooLarge, match="larger than max"):
        await temporal.start_or_join([oversized(f"a{key}", 3_000_000)], policy, dry_run=False)
    small = oversized(f"b{key}", 10)
    big = small.model_copy(update={"detection_id": f"c{key}", "labels": {"blob": "x" * 2_500_000}})
    with pytest.raises(TemporalPayloadTooLarge, match=r"(?i)size exceeds limit"):
        await temporal.start_or_join([small, big], policy, dry_run=False)


@contextlib.asynccontextmanager
async def pushed() -> AsyncIterator[Any]:
    """The push gateway (series `lat`) with Temporal unreachable: a batch that fired would 503."""
    async with push_app(unreachable_temporal(), "lat") as gw:
        yield gw


def point(at: datetime, value: float) -> dict[str, Any]:
    """One point of a pushed series."""
    return {"timestamp": at.isoformat(), "value": value}


async def test_a_point_from_the_far_future_is_422_and_does_not_wedge_the_series() -> None:
    async with pushed() as gw:
        assert len(scores(await gw.push(normal(0, 60)))) == 60
        last = datetime.fromisoformat(normal(59, 1)[0]["timestamp"])
        future = datetime(9999, 1, 1, tzinfo=UTC)
        response = await gw.push([point(last + timedelta(minutes=1), 100.0), point(future, 100.0)])
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("nothing was accepted: points[1].timestamp: 9999-01-01T00:00:00+00:00 "
                                 "is more than 5 minutes ahead of the gateway's clock (")
        assert gw.metric("medkit_gateway_requests_rejected_total", route="detector",
                         reason="future_timestamp") == 1
        assert len(scores(await gw.push(normal(60, 60)))) == 60  # the series still takes points

        ahead = datetime.now(UTC) + MAX_CLOCK_SKEW - timedelta(seconds=30)
        assert len(scores(await gw.push([point(ahead, 100.0)]))) == 1  # clock skew is tolerated


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, 1e101])
async def test_a_value_of_absurd_magnitude_is_422_and_scores_nothing(value: float) -> None:
    """Such a value would have made the detector's running sums infinite (or, clamped, would
    dominate the series for thousands of points); the batch is refused and the next one scores
    exactly as on a series that never saw it."""
    first, second = normal(0, 60), normal(60, 60)
    async with pushed() as gw, pushed() as clean:
        assert scores(await gw.push(first)) == scores(await clean.push(first))
        at = datetime.fromisoformat(second[0]["timestamp"])
        response = await gw.push([second[0], point(at + timedelta(seconds=30), value)])
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == (f"body.1.value: Value error, {value:g} is beyond the "
                                             "largest magnitude a series value may have (1e+100)")
        assert scores(await gw.push(second)) == scores(await clean.push(second))
