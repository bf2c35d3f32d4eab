"""Policy URLs that cannot be requested (probes, Prometheus, actions, notification routes):
refused by the policy, harmless at run time."""

from __future__ import annotations

import httpx
import pytest

from activities.probes import bounded_probe
from models.policy_yaml import PolicyError, parse_policy
from models.probes import HttpProbe
from models.urls import redact_url

POLICY = """version: 1
services:
  - name: web
    probes: [{kind: http, url: "%s"}]
    ladders:
      minor: [{name: r, steps: [{action: a}]}]
      major: [{name: r, steps: [{action: a}]}]
      critical: [{name: r, steps: [{action: a}]}]
    actions: {a: {kind: command, argv: ["true"]}}
"""


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:99999/health", "not a valid URL (Port out of range 0-65535)"),
    ("http://[::1/", "not a valid URL (Invalid IPv6 URL)"),
    ("http:///health", "the URL names no host"),
    ("http://127.0.0.1:0/health", "port 0 cannot be requested"),
])
def test_a_probe_url_that_cannot_be_requested_is_refused_naming_its_field(url: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY % url, "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == "services[0].probes[0].url"
    assert message in problem.message


def test_a_prometheus_url_that_cannot_be_requested_is_refused_naming_its_field() -> None:
    text = (POLICY % "http://127.0.0.1:1/") + (
        "anomaly:\n  series: [{name: e, service: web, prometheus: 'http://p:70000', query: up}]\n")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == "anomaly.series[0].prometheus"
    assert "Port out of range" in problem.message


@pytest.mark.parametrize(("spec", "field"), [
    ("actions: {a: {kind: http, url: 'http://h:99999/restart'}}", "actions.a.url"),
    ("actions: {a: {kind: breaker, url: 'http://[::1/b', state: open}}", "actions.a.url"),
    ("actions: {a: {kind: scale_http, url: 'http://h/s', current_url: 'http:///n', replicas: 2}}",
     "actions.a.current_url"),
    ("actions: {a: {kind: command, argv: ['true']}}\n"
     "    routes: {hook: {kind: webhook, url: 'http://h:0/x'}}", "routes.hook.url"),
    ("actions: {a: {kind: command, argv: ['true']}}\n"
     "    routes: {pd: {kind: pagerduty, routing_key_env: K, events_url: 'https://e v'}}",
     "routes.pd.events_url"),
])
def test_action_and_route_urls_that_cannot_be_requested_are_refused_as_probe_urls_are(
        spec: str, field: str) -> None:
    """Actions and notification routes checked only the scheme, so a URL no request can use
    passed `medkit config check` and failed the action or the page when it mattered."""
    text = POLICY.replace("actions: {a: {kind: command, argv: [\"true\"]}}", spec)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text % "http://h/health", "policy.yaml")
    assert [problem.path for problem in caught.value.problems] == [f"services[0].{field}"]


def test_valid_urls_still_parse() -> None:
    for url in ("http://[::1]:8080/healthz", "https://user:pw@example.com/x?y=1", "http://h"):
        assert HttpProbe(url=url).url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/health", "http://[::1/"])
async def test_a_url_validation_let_through_is_a_failing_probe_not_a_crash(url: str) -> None:
    """Defence in depth: a probe built without validation (model_construct) must not raise."""
    probe = HttpProbe.model_construct(kind="http", name="http", group=None, url=url, method="GET",
                                      expect_status=[200], timeout=HttpProbe(url="http://h").timeout,
                                      max_latency_ms=None, body_contains=None)
    async with httpx.AsyncClient() as http:
        result = await bounded_probe(http, probe)
    assert not result.healthy and result.failure == "error"
    assert url in result.detail


async def test_probe_evidence_never_shows_the_urls_credentials() -> None:
    probe = HttpProbe(url="http://admin:s3cret@127.0.0.1:1/health?token=abc&x=1", timeout="1s")
    async with httpx.AsyncClient() as http:
        result = await bounded_probe(http, probe)
    assert not result.healthy
    assert "s3cret" not in result.detail and "abc" not in result.detail
    assert "http://***@127.0.0.1:1/health?token=***&x=1" in result.detail


@pytest.mark.parametrize(("url", "shown"), [
    ("http://admin:s3cret@prom:9090", "http://***@prom:9090"),
    ("http://prom:9090/api?query=up&api_key=k&X-Amz-Signature=s", "http://prom:9090/api?query=up&api_key=***&X-Amz-Signature=***"),
    ("http://prom:9090/x?query=up", "http://prom:9090/x?query=up"),
    ("http://u:p@[::1/x?password=p", "http://***@[::1/x"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
