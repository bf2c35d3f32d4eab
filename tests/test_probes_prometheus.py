"""The Prometheus probe against a real Prometheus scraping the real demo service every second.

One demo service and one Prometheus serve the whole module (Prometheus's service discovery takes
about five seconds to start scraping a new target); every test leaves the demo healthy.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.probe_prometheus import judge
from activities.probes import ProbeActivities, run_probe
from models.probes import ProbeResult, ProbeRoundRequest, PrometheusProbe, TcpProbe
from tests.conftest import DemoService, eventually, free_port, wait_for_port
from tests.prometheus_fixture import PrometheusServer, running_prometheus

ERROR_RATIO = 'sum(demo_requests_total{code=~"5.."}) / sum(demo_requests_total)'


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    """The demo service for the whole module."""
    home = tmp_path_factory.mktemp("demo")
    service = DemoService(port=free_port(), pid_file=home / "demo.pid", log_file=home / "demo.log")
    with service.log_file.open("ab") as log:
        service.process = subprocess.Popen(service.argv, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
    wait_for_port(service.port)
    yield service
    service.process.kill()
    service.process.wait(timeout=5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory,
               demo_service: DemoService) -> Iterator[PrometheusServer]:
    """Prometheus scraping the demo service's /metrics every second, with a first scrape landed."""
    home = tmp_path_factory.mktemp("prom")
    with running_prometheus(home, [f"127.0.0.1:{demo_service.port}"]) as server:
        server.wait_for("demo_healthy")
        yield server


@pytest.fixture
def healthy_demo(demo_service: DemoService, prometheus: PrometheusServer) -> Iterator[DemoService]:
    """The demo with no fault, as Prometheus last saw it; the fault is cleared again afterwards."""
    demo_service.inject("healthy")
    prometheus.wait_for("demo_healthy == 1 and demo_breaker_open == 0")
    yield demo_service
    demo_service.inject("healthy")


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client like the worker's shared one."""
    async with httpx.AsyncClient() as client:
        yield client


def probe(prometheus: PrometheusServer, query: str, unhealthy_when: str, **extra: Any) -> PrometheusProbe:
    """A Prometheus probe of the test server."""
    return PrometheusProbe.model_validate({"name": "metric", "url": prometheus.url, "query": query,
                                           "unhealthy_when": unhealthy_when, **extra})


async def test_fault_in_the_demo_turns_the_probe_unhealthy(
    prometheus: PrometheusServer, healthy_demo: DemoService, http: httpx.AsyncClient
) -> None:
    spec = probe(prometheus, "demo_healthy", "< 1")
    before = await run_probe(http, spec)
    assert before.healthy, before.detail
    assert before.observed["value"] == 1.0
    assert before.observed["series"] == 1

    healthy_demo.inject("unhealthy")

    async def unhealthy() -> ProbeResult | None:
        result = await run_probe(http, spec)
        return None if result.healthy else result

    after: ProbeResult = await eventually(unhealthy)
    assert after.failure == "threshold"
    assert after.observed["value"] == 0.0
    assert "unhealthy when < 1" in after.detail


async def test_empty_result_follows_the_empty_setting(
    prometheus: PrometheusServer, http: httpx.AsyncClient
) -> None:
    spec = probe(prometheus, 'demo_requests_total{code="599"}', "> 0")
    quiet = await run_probe(http, spec)
    assert quiet.healthy, quiet.detail  # no series: healthy by default, as an alert would not fire
    assert quiet.observed == {"series": 0, "value": None}
    strict = await run_probe(http, spec.model_copy(update={"empty": "unhealthy"}))
    assert not strict.healthy and strict.failure == "threshold"


async def test_error_ratio_breaches(
    prometheus: PrometheusServer, healthy_demo: DemoService, http: httpx.AsyncClient
) -> None:
    spec = probe(prometheus, ERROR_RATIO, "> 0.05")
    healthy_demo.inject("errors", error_rate=1.0)
    for _ in range(20):
        assert httpx.get(f"{healthy_demo.base}/", timeout=5).status_code == 500

    async def breaching() -> ProbeResult | None:
        result = await run_probe(http, spec)
        return None if result.healthy else result

    breach: ProbeResult = await eventually(breaching)
    value = breach.observed["value"]
    assert isinstance(value, float) and 0.05 < value <= 1.0


async def test_several_series_any_and_all(
    prometheus: PrometheusServer, healthy_demo: DemoService, http: httpx.AsyncClient
) -> None:
    query = '{__name__=~"demo_healthy|demo_breaker_open"}'  # 1 and 0 while the demo is healthy
    any_series = await run_probe(http, probe(prometheus, query, "< 1"))
    assert not any_series.healthy
    assert any_series.observed["series"] == 2 and any_series.observed["breaching"] == 1
    assert any_series.observed["value"] == 0.0
    assert any_series.observed["labels"] == (
        f'demo_breaker_open{{instance="127.0.0.1:{healthy_demo.port}",job="targets"}}'
    )
    all_series = await run_probe(http, probe(prometheus, query, "< 1", match="all"))
    assert all_series.healthy, all_series.detail


async def test_scalar_result(prometheus: PrometheusServer, http: httpx.AsyncClient) -> None:
    result = await run_probe(http, probe(prometheus, "scalar(demo_breaker_open)", "== 1"))
    assert result.healthy
    assert result.observed["labels"] == "scalar" and result.observed["value"] == 0.0


async def test_bad_configuration_is_a_non_retryable_error(
    prometheus: PrometheusServer, http: httpx.AsyncClient
) -> None:
    activities = ProbeActivities(http)
    env = ActivityEnvironment()
    for query, why in (("sum(", "rejected the query"), ("demo_healthy[1m]", "returns a matrix")):
        spec = probe(prometheus, query, "> 0")
        with pytest.raises(ApplicationError) as caught:
            await run_probe(http, spec)
        assert caught.value.non_retryable and caught.value.type == "ProbeConfigError"
        assert why in str(caught.value)
        # inside a recovery's probe round the same mistake is an unhealthy probe with the reason
        round_ = await env.run(activities.probe_service,
                               ProbeRoundRequest(service="demo", probes=[spec]))
        assert not round_.results[0].healthy and round_.results[0].failure == "error"
        assert why in round_.results[0].detail
    wrong_path = probe(prometheus, "up", "< 1").model_copy(update={"url": f"{prometheus.url}/nope"})
    with pytest.raises(ApplicationError, match="HTTP 404"):
        await run_probe(http, wrong_path)


async def test_unreachable_prometheus_is_an_unhealthy_result(http: httpx.AsyncClient) -> None:
    spec = PrometheusProbe.model_validate({"name": "metric", "url": f"http://127.0.0.1:{free_port()}",
                                           "query": "up", "unhealthy_when": "< 1"})
    result = await run_probe(http, spec)
    assert not result.healthy and result.failure == "error"
    assert "unreachable" in result.detail
    # A URL with credentials: the detail (which goes into the recovery's history) hides them.
    secret = spec.model_copy(update={"url": f"http://admin:hunter2-pw@127.0.0.1:{free_port()}"})
    hidden = await run_probe(http, secret)
    assert "unreachable" in hidden.detail and "hunter2-pw" not in hidden.detail


def test_judge_query_errors_nan_and_equality() -> None:
    spec = PrometheusProbe.model_validate({"name": "m", "url": "http://127.0.0.1:1", "query": "q",
                                           "unhealthy_when": "!= 0"})
    nan = judge(spec, {"resultType": "vector", "result": [
        {"metric": {"__name__": "x"}, "value": [0, "NaN"]}]}, 1.0)
    assert nan.healthy and nan.observed["value"] is None  # NaN never meets a comparison
    mixed = judge(spec, {"resultType": "vector", "result": [
        {"metric": {"i": "a"}, "value": [0, "0"]}, {"metric": {"i": "b"}, "value": [0, "+Inf"]}]}, 1.0)
    assert not mixed.healthy
    assert mixed.observed["labels"] == '{i="b"}' and mixed.observed["value"] is None
    with pytest.raises(ApplicationError, match="returns a string"):
        judge(spec, {"resultType": "string", "result": [0, "x"]}, 1.0)


@contextlib.contextmanager
def answering(body: Any) -> Iterator[str]:
    """A real local HTTP server answering every query with `body` (HTTP 200), like a Prometheus
    that is not quite one (a proxy, an incompatible version); yields its URL."""
    data = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("result", "error"), [
    ({"resultType": "vector", "result": [{"metric": {}}]}, "KeyError"),
    ({"resultType": "vector", "result": [{"metric": {}, "value": [0, "abc"]}]}, "ValueError"),
    ({"resultType": "scalar", "result": [0]}, "IndexError"),
    ({"resultType": "vector", "result": ["up 1"]}, "AttributeError"),
])
async def test_a_malformed_answer_fails_this_probe_not_the_round(
    http: httpx.AsyncClient, result: Any, error: str
) -> None:
    """Judging such an answer raised out of the probe round: the round failed (retried for the
    same answer) and the recovery counted every probe unhealthy, the TCP one that passes too;
    a ValueError was reported as a URL that cannot be requested."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, answering({"status": "success", "data": result}) as url:
        spec = PrometheusProbe.model_validate({"name": "metric", "url": url, "query": "up",
                                               "unhealthy_when": "< 1"})
        tcp = TcpProbe(name="port", port=listener.getsockname()[1])
        round_ = await ActivityEnvironment().run(
            ProbeActivities(http).probe_service, ProbeRoundRequest(service="demo", probes=[spec, tcp]))
    metric, port = round_.results
    assert (metric.healthy, metric.failure) == (False, "error")
    assert metric.detail == f"{url}/api/v1/query answered a malformed result ({error})"
    assert port.healthy
