"""Health scores: the per-probe formula, the rolling service score and its status, the fleet's
worst status, and GET /v1/health fed by a score-only poller probing a real demo service."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.deps import ActivityDeps
from detectors.health_poller import (
    HEALTHY_SCORE,
    UNHEALTHY_SCORE,
    HealthBoard,
    HealthPoller,
    latency_budget_ms,
    probe_score,
    status_for,
)
from gateway.app import create_app
from gateway.auth import AuthConfig
from gateway.settings import GatewaySettings
from gateway.temporal import TemporalGateway
from models.health import HealthStatus
from models.policy import PolicyFile, ServicePolicy
from models.probes import ProbeResult
from store.incidents import IncidentStore
from store.ledger import create_store_engine
from tests.alertmanager_fixture import DETECTOR_TOKEN, OPERATOR_TOKEN
from tests.conftest import DemoService, eventually, free_port
from workers.client import TemporalTarget


def service(name: str = "shop", port: int = 9, **health_poll: Any) -> ServicePolicy:
    """A service with an HTTP probe (500 ms latency budget) and a TCP probe (1 s timeout)."""
    rung = [{"name": "wait", "steps": [{"wait": "100ms"}]}]
    return PolicyFile.model_validate({"services": [{
        "name": name,
        "probes": [
            {"kind": "http", "name": "http", "url": f"http://127.0.0.1:{port}/healthz",
             "timeout": "2s", "max_latency_ms": 500},
            {"kind": "tcp", "name": "tcp", "port": port, "timeout": "1s"},
        ],
        "ladders": {"minor": rung, "major": rung, "critical": rung},
        "health_poll": {"interval": "200ms", "failure_threshold": 3, **health_poll},
    }]}).services[0]


def result(probe: str, healthy: bool, latency_ms: float | None = None) -> ProbeResult:
    """One probe's result as a probe round returns it."""
    return ProbeResult(probe=probe, kind="http" if probe == "http" else "tcp", healthy=healthy,
                       latency_ms=latency_ms, detail="seen", at=datetime.now(UTC))


def test_latency_budget_is_max_latency_else_the_timeout() -> None:
    http, tcp = service().probes
    assert latency_budget_ms(http) == 500
    assert latency_budget_ms(tcp) == 1000


@pytest.mark.parametrize(("healthy", "latency", "score"), [
    (False, 10.0, 0.0),      # failing: nothing
    (True, None, 100.0),     # no latency measured (a process probe)
    (True, 100.0, 100.0),    # well within the budget
    (True, 250.0, 100.0),    # half the budget
    (True, 375.0, 75.0),     # three quarters: halfway down to SLOW_SCORE
    (True, 500.0, 50.0),     # at the budget
    (True, 5000.0, 50.0),    # beyond it: up, but slow, never below 50
])
def test_probe_score(healthy: bool, latency: float | None, score: float) -> None:
    assert probe_score(result("http", healthy, latency), 500.0) == pytest.approx(score)


@pytest.mark.parametrize(("score", "failing", "status"), [
    (100.0, 0, HealthStatus.HEALTHY),
    (HEALTHY_SCORE, 0, HealthStatus.HEALTHY),
    (89.9, 0, HealthStatus.DEGRADED),       # slow, or failed earlier in the window
    (100.0, 1, HealthStatus.DEGRADED),      # failing now, streak not full
    (UNHEALTHY_SCORE, 2, HealthStatus.DEGRADED),
    (49.9, 0, HealthStatus.UNHEALTHY),
    (95.0, 3, HealthStatus.UNHEALTHY),      # a full streak is unhealthy whatever the average
])
def test_status_thresholds(score: float, failing: int, status: HealthStatus) -> None:
    assert status_for(score, failing, failure_threshold=3) == status


def test_board_scores_rounds_over_its_window_and_the_fleet_takes_the_worst() -> None:
    shop, cart = service("shop"), service("cart")
    board = HealthBoard([shop, cart], window=4)
    fleet = board.fleet()
    assert fleet.status == HealthStatus.UNKNOWN and fleet.score is None
    assert [s.status for s in fleet.services] == [HealthStatus.UNKNOWN] * 2

    now = datetime.now(UTC)
    healthy = board.record("shop", [result("http", True, 20), result("tcp", True, 1)], now)
    assert (healthy.score, healthy.status) == (100.0, HealthStatus.HEALTHY)
    assert board.fleet().status == HealthStatus.UNKNOWN  # cart never probed: not all healthy

    half = board.record("shop", [result("http", False), result("tcp", True, 1)], now)
    assert half.probes[0].score == 0 and half.probes[1].score == 100
    assert (half.score, half.failing_rounds, half.status) == (75.0, 1, HealthStatus.DEGRADED)

    board.record("shop", [result("http", False), result("tcp", False)], now)
    down = board.record("shop", [result("http", False), result("tcp", False)], now)
    assert down.failing_rounds == 3 and down.status == HealthStatus.UNHEALTHY
    assert down.score == pytest.approx((100 + 50 + 0 + 0) / 4, abs=0.1)

    board.record("cart", [result("http", True, 375), result("tcp", True, 1)], now)
    fleet = board.fleet()
    assert fleet.status == HealthStatus.UNHEALTHY
    assert fleet.score == down.score
    assert board.service("cart").score == 87.5  # (75 + 100) / 2: slow, so degraded
    assert board.service("cart").status == HealthStatus.DEGRADED

    for _ in range(4):  # the window forgets the outage
        back = board.record("shop", [result("http", True, 20), result("tcp", True, 1)], now)
    assert (back.score, back.status, back.rounds) == (100.0, HealthStatus.HEALTHY, 4)


def test_board_ignores_services_without_health_polling() -> None:
    board = HealthBoard([service("shop"), service("quiet", enabled=False)])
    assert [s.service for s in board.fleet().services] == ["shop"]
    with pytest.raises(KeyError):
        board.service("quiet")


@contextlib.asynccontextmanager
async def scored_gateway(policy: ServicePolicy) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app fed by a score-only poller of `policy`, on an in-process transport.

    Temporal is a closed port: health scores never need it."""
    poller = HealthPoller([policy], report=None)
    settings = GatewaySettings(policy=PolicyFile(services=[policy]),
                               auth=AuthConfig(DETECTOR_TOKEN, OPERATOR_TOKEN))
    temporal = TemporalGateway(TemporalTarget(address=f"127.0.0.1:{free_port()}",
                                              task_queue=f"q-{uuid.uuid4().hex[:8]}"), timeout=2)
    app = create_app(settings, temporal, board=poller.board)
    polling = asyncio.create_task(poller.run())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway") as http:
            yield http
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling


async def test_v1_health_follows_a_real_service(demo_service: DemoService) -> None:
    async with scored_gateway(service("shop", demo_service.port)) as http:
        async def status_is(wanted: HealthStatus) -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/v1/health")).json()
            return body if body["services"][0]["status"] == wanted.value else None

        healthy = await eventually(lambda: status_is(HealthStatus.HEALTHY))
        assert healthy["status"] == "healthy" and healthy["score"] == 100.0
        shop = healthy["services"][0]
        assert shop["service"] == "shop" and shop["failing_rounds"] == 0
        assert {p["probe"] for p in shop["probes"]} == {"http", "tcp"}
        assert shop["probes"][0]["threshold_ms"] == 500

        demo_service.inject("unhealthy")
        down = await eventually(lambda: status_is(HealthStatus.UNHEALTHY))
        shop = down["services"][0]
        assert down["status"] == "unhealthy" and shop["failing_rounds"] >= 3
        assert [p["healthy"] for p in shop["probes"]] == [False, True]  # the port still answers

        demo_service.inject("healthy")
        await eventually(lambda: status_is(HealthStatus.DEGRADED))  # passing, window remembers


async def test_v1_health_is_open_and_the_dashboard_data_needs_the_operator_token() -> None:
    async with scored_gateway(service("shop", free_port())) as http:
        assert (await http.get("/v1/health")).status_code == 200
        assert (await http.get("/v1/dashboard")).status_code == 401
        detector = {"Authorization": f"Bearer {DETECTOR_TOKEN}"}
        assert (await http.get("/v1/dashboard", headers=detector)).status_code == 403
        operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        snapshot = (await http.get("/v1/dashboard", headers=operator)).json()
        assert snapshot["recoveries"] == [] and "Temporal" in snapshot["recoveries_error"]
        assert snapshot["health"]["services"][0]["service"] == "shop"
        page = await http.get("/dashboard/")
        assert page.status_code == 200 and "medkit dashboard" in page.text


async def test_the_incident_store_is_opened_on_a_refresh_once_it_exists(tmp_path: Path) -> None:
    """A gateway started before any worker created the database says so, then shows incidents
    once a worker has created it, without a restart."""
    database = tmp_path / "medkit.db"

    def open_when_created() -> IncidentStore:
        if not database.exists():
            raise LookupError(f"no incident database at {database}")
        return IncidentStore(create_store_engine(f"sqlite:///{database}"))

    settings = GatewaySettings(policy=PolicyFile(services=[service("shop")]),
                               auth=AuthConfig(DETECTOR_TOKEN, OPERATOR_TOKEN))
    temporal = TemporalGateway(TemporalTarget(address=f"127.0.0.1:{free_port()}"), timeout=2)
    app = create_app(settings, temporal, incidents=open_when_created)
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as http:
        before = (await http.get("/v1/dashboard", headers=operator)).json()
        assert before["incidents_error"] == f"no incident database at {database}"
        await ActivityDeps.create(tmp_path).http.aclose()  # a worker's start: creates, migrates
        after = (await http.get("/v1/dashboard", headers=operator)).json()
        assert after["incidents_error"] is None and after["incidents"] == [] and after["mttr"] == []
