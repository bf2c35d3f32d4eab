"""Policy URLs that cannot be requested (probes, Prometheus, actions, notification routes):
refused by the policy, harmless at run time."""

from __future__ import annotations

import httpx
import pytest

from activities.probes import bounded_probe
from activities.url_errors import url_error, url_problem
from models.policy_yaml import PolicyError, parse_policy
from models.probes import HttpProbe, PrometheusProbe
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


def test_a_refused_url_is_explained_without_the_password_it_holds() -> None:
    """A `/` in a password ends the URL's authority early, so urllib reads the password as the
    port and quotes it in its error: the policy error (printed by `config check` and at worker
    start-up) names the field and the reason, never the password."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY % "http://admin:s3cr3t/pw@127.0.0.1:9090/health", "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == "services[0].probes[0].url"
    assert "not a valid URL (Port could not be cast to integer value as)" in problem.message
    assert "s3cr3t" not in str(caught.value)


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
    for url in ("http://[::1]:8080/healthz", "https://example.com/x?y=1", "http://h"):
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


@pytest.mark.parametrize(("url", "detail"), [
    # a "/" in the password ends the authority early: httpx reads "s3cr3t" as the port and quotes it
    ("http://admin:s3cr3t/pw@127.0.0.1:9090",
     "probe failed: cannot request http://***@127.0.0.1:9090: Invalid port"),
    ("http://admin:s3cr3t@127.0.0.1:99999",
     "probe failed: cannot request http://***@127.0.0.1:99999: connect(): port must be 0-65535."),
    ("http://admin:s3cr3t@[::1", "probe failed: cannot request http://***@[::1: Invalid port"),
])
async def test_a_probe_whose_url_cannot_be_requested_fails_without_showing_its_secret(
    url: str, detail: str
) -> None:
    """bounded_probe's own URL-error branch (a Prometheus probe does not catch URL errors itself):
    a failing probe, not a crash, with a detail that names the URL redacted and the reason
    without the piece of the URL httpx quotes (which was the password)."""
    valid = PrometheusProbe(url="http://127.0.0.1:1", query="up", unhealthy_when="< 1")
    probe = valid.model_copy(update={"url": url})  # as if validation had let it through
    async with httpx.AsyncClient() as http:
        result = await bounded_probe(http, probe)
    assert (result.healthy, result.failure, result.probe) == (False, "error", "prometheus")
    assert result.detail == detail
    assert "s3cr3t" not in result.model_dump_json()


async def test_an_http_probe_whose_url_cannot_be_requested_does_not_show_its_password() -> None:
    probe = HttpProbe(url="http://h").model_copy(update={"url": "http://admin:s3cr3t/pw@127.0.0.1:1/health"})
    async with httpx.AsyncClient() as http:
        result = await bounded_probe(http, probe)
    assert (result.healthy, result.failure) == (False, "error")
    assert result.detail == "cannot request http://***@127.0.0.1:1/health: Invalid port"


async def test_probe_evidence_never_shows_the_urls_credentials() -> None:
    """Defence in depth: a policy refuses such a URL (tests/test_policy_secrets.py), but a probe
    built without validation must not show it either."""
    probe = HttpProbe(url="http://h", timeout="1s").model_copy(
        update={"url": "http://admin:s3cret@127.0.0.1:1/health?token=abc&x=1"})
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
    ("http://admin:s3cr3t/pw@prom:9090/x?token=t", "http://***@prom:9090/x"),
    ("http://admin:pa#ss@prom:9090/x", "http://***@prom:9090/x"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_header_httpx_cannot_encode_is_not_taken_for_a_url_error() -> None:
    """UnicodeEncodeError is a ValueError, like the URL errors, but httpx raises it for a header
    value (a non-ASCII token or policy header): calling it "cannot request the URL" misleads."""
    encoding = UnicodeEncodeError("ascii", "Bearer t\u00f6k", 8, 9, "ordinal not in range(128)")
    assert url_error(encoding) is None
    assert url_error(ExceptionGroup("connect", [encoding])) is None
    port = OverflowError("connect(): port must be 0-65535.")
    assert url_error(ExceptionGroup("connect", [port])) is port


@pytest.mark.parametrize(("url", "problem"), [
    ("https://example.com:8443/x?token=t", None),
    ("http://[::1]:8080/x", None),
    ('"https://hooks.example/T0"', "it is not an http:// or https:// URL"),
    ("ftp://example.com/x", "it is not an http:// or https:// URL"),
    ("http:///x", "it names no host"),
    ("http://127.0.0.1:99999/x", "its port is not in 1-65535"),
    ("http://127.0.0.1:0/x", "its port is not in 1-65535"),
    ("http://admin:s3cr3t/pw@127.0.0.1:9090", "Invalid port"),
])
def test_url_problem_says_why_without_the_url(url: str, problem: str | None) -> None:
    """Checked before a request, so no other error of the same type (a body's ValueError) is
    taken for the URL's."""
    assert url_problem(url) == problem
