"""No credential written in a service's policy: every recovery carries that policy, as its
snapshot, in its workflow input, so anything secret in it is stored in Temporal's history in
clear and shown by the Temporal UI, `temporal workflow show` and every history export."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.breaker import BreakerActivities
from activities.deps import ActivityDeps
from activities.http_action import HttpActionActivities
from activities.process import ProcessSupervisor
from activities.process_pool import ProcessPool
from activities.scale import ScaleActivities
from models.actions import ActionRequest
from models.policy import ServicePolicy
from models.policy_yaml import PolicyError, parse_policy
from tests.conftest import free_port

SECRET = "Sup3rS3cretValue"

SERVICE = """version: 1
services:
  - name: web
    probes: [%(probe)s]
    ladders:
      minor: [{name: r, steps: [{action: a}]}]
      major: [{name: r, steps: [{action: a}]}]
      critical: [{name: r, steps: [{action: a}]}]
    actions: {a: %(action)s}
%(rest)s"""

TCP = "{kind: tcp, port: 1}"
COMMAND = "{kind: command, argv: ['true']}"


def policy(probe: str = TCP, action: str = COMMAND, rest: str = "") -> str:
    """A one-service policy file with this probe, action `a` and further service fields."""
    return SERVICE % {"probe": probe, "action": action, "rest": rest}


@pytest.mark.parametrize(("text", "path"), [
    (policy(probe=f"{{kind: http, url: 'http://admin:{SECRET}@127.0.0.1:1/health'}}"),
     "services[0].probes[0].url"),
    (policy(probe=f"{{kind: prometheus, url: 'http://127.0.0.1:9090/?access_token={SECRET}', "
                  "query: up, unhealthy_when: '< 1'}"),
     "services[0].probes[0].url"),
    (policy(action=f"{{kind: http, url: 'http://127.0.0.1:1/restart?x=1&api_key={SECRET}'}}"),
     "services[0].actions.a.url"),
    (policy(action=f"{{kind: breaker, url: 'http://ops:{SECRET}@127.0.0.1:1/b', state: open}}"),
     "services[0].actions.a.url"),
    (policy(action="{kind: scale_http, url: 'http://127.0.0.1:1/s', replicas: 2, "
                   f"current_url: 'http://127.0.0.1:1/n?token={SECRET}'}}"),
     "services[0].actions.a.current_url"),
    (policy(action="{kind: restart_process, argv: ['x'], pid_file: /tmp/x.pid, ready_probe: "
                   f"{{kind: http, url: 'http://u:{SECRET}@127.0.0.1:1/h'}}}}"),
     "services[0].actions.a.ready_probe.url"),
    (policy(rest=f"    routes: {{hook: {{kind: webhook, url: 'https://bot:{SECRET}@hooks.example/x'}}}}"),
     "services[0].routes.hook.url"),
    (policy(rest="    routes: {pd: {kind: pagerduty, routing_key_env: PD, "
                 f"events_url: 'https://events.example/v2?auth={SECRET}'}}}}"),
     "services[0].routes.pd.events_url"),
])
def test_a_service_url_carrying_a_credential_is_refused_without_showing_it(
        text: str, path: str) -> None:
    """Such a URL was accepted: probe evidence and log lines showed it redacted, but the policy
    snapshot every recovery carries held it in clear, in the workflow input of its history."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == path
    assert "workflow history" in problem.message
    assert SECRET not in str(caught.value)


def test_a_service_policy_built_in_code_refuses_a_credential_url_too() -> None:
    """The gateway and the CLI start recoveries with a ServicePolicy; the model itself refuses."""
    with pytest.raises(ValidationError) as caught:
        ServicePolicy.model_validate({
            "name": "web", "probes": [{"kind": "http", "url": f"http://u:{SECRET}@h/x"}],
            "ladders": {severity: [{"name": "r", "steps": [{"wait": "1s"}]}]
                        for severity in ("minor", "major", "critical")},
        })
    assert "user info" in str(caught.value)


def test_urls_without_credentials_and_detector_only_urls_with_them_still_parse() -> None:
    """Query parameters that are no credential stay allowed, and an anomaly series' Prometheus
    URL, which only `medkit watch` uses (no workflow carries it), may still hold credentials."""
    text = policy(probe="{kind: http, url: 'http://127.0.0.1:1/health?verbose=1&verbosity=no'}",
                  rest=("anomaly:\n  series: [{name: e, service: web, "
                        f"prometheus: 'http://u:{SECRET}@p:9090', query: up}}]\n"))
    parsed = parse_policy(text, "policy.yaml")
    assert parsed.services[0].probes[0].url == "http://127.0.0.1:1/health?verbose=1&verbosity=no"


@pytest.mark.parametrize("header", ["X-Api-Key", "apikey", "X-Auth-Token", "Private-Token",
                                    "X-Vault-Token", "X-Session-Id", "X-Client-Secret"])
def test_a_header_named_like_a_credential_is_refused_without_showing_it(header: str) -> None:
    """Only Authorization, Proxy-Authorization, Cookie and Set-Cookie were refused, so the
    usual API-key headers went, value and all, into every recovery's workflow input."""
    text = policy(action=f"{{kind: http, url: 'http://127.0.0.1:1/r', "
                         f"headers: {{{header}: {SECRET}, X-Request-Source: medkit}}}}")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == "services[0].actions.a.headers"
    assert header in problem.message and "bearer_token_env" in problem.message
    assert SECRET not in str(caught.value) and "X-Request-Source" not in problem.message


def test_plain_headers_are_still_accepted() -> None:
    text = policy(action="{kind: http, url: 'http://127.0.0.1:1/r', headers: "
                         "{X-Request-Source: medkit, Accept: application/json, Keep-Alive: '5'}}")
    assert parse_policy(text, "policy.yaml").services[0].actions["a"].kind == "http"


@pytest.mark.parametrize(("action", "path"), [
    ("{kind: command, argv: ['true'], env: {API_TOKEN: %s, MODE: prod}}", "services[0].actions.a.env"),
    ("{kind: restart_process, argv: ['x'], pid_file: /tmp/x.pid, env: {DB_PASSWORD: %s}}",
     "services[0].actions.a.env"),
    ("{kind: scale_command, argv: ['s', '{replicas}'], replicas: 2, env: {AWS_SECRET_ACCESS_KEY: %s}}",
     "services[0].actions.a.env"),
])
def test_a_child_variable_named_like_a_secret_is_refused_without_showing_it(
        action: str, path: str) -> None:
    """`env` was documented as "never secrets" but nothing refused one, so `API_TOKEN: ...`
    went, value and all, into every recovery's workflow input."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy(action=action % SECRET), "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == path and "inherit_env" in problem.message
    assert SECRET not in str(caught.value) and "MODE" not in problem.message


def test_a_command_probe_variable_named_like_a_secret_is_refused() -> None:
    text = policy(probe=f"{{kind: command, argv: ['true'], env: {{PGPASSWORD: {SECRET}}}}}")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    assert [p.path for p in caught.value.problems] == ["services[0].probes[0].env"]
    assert SECRET not in str(caught.value)


# ----- defence in depth: a URL that got past validation is never shown ---------------------


def forged(spec: dict[str, Any], url: str) -> ActionRequest:
    """An action request whose spec's url is `url`, as if validation had let it through (a
    worker's own policy refuses it; this is what the activity shows if one ever arrives)."""
    request = ActionRequest.model_validate({"workflow_id": "recovery:web:t", "service": "web",
                                            "action_name": "a", "spec": spec, "reason": "test"})
    return request.model_copy(update={"spec": request.spec.model_copy(update={"url": url})})


@pytest.mark.parametrize(("kind", "spec"), [
    ("http", {"kind": "http", "url": "http://h/x", "method": "PUT"}),
    ("breaker", {"kind": "breaker", "url": "http://h/x", "state": "open"}),
    ("scale_http", {"kind": "scale_http", "url": "http://h/x", "replicas": 2}),
])
async def test_an_action_url_with_credentials_is_shown_redacted(
        tmp_path: Path, kind: str, spec: dict[str, Any]) -> None:
    """The http, breaker and scale_http actions put their URL as written into heartbeats, error
    messages (the history, the worker's log) and the dry-run detail, while probes redacted it."""
    deps = ActivityDeps.create(tmp_path / "state")
    url = f"http://admin:{SECRET}@127.0.0.1:{free_port()}/x?token={SECRET}"
    fn = {"http": HttpActionActivities(deps).http_action,
          "breaker": BreakerActivities(deps).set_breaker,
          "scale_http": ScaleActivities(deps, ProcessPool(deps.state_dir, ProcessSupervisor(
              deps.state_dir))).scale_http}[kind]
    env = ActivityEnvironment()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    shown: list[str] = []
    for step, dry in (("real", False), ("dry", True)):
        env.info = dataclasses.replace(env.info, activity_id=step, workflow_id="recovery:web:t",
                                       activity_type=kind)
        request = forged(spec, url).model_copy(update={"dry_run": dry})
        try:
            shown.append((await env.run(fn, request)).model_dump_json())
        except ApplicationError as err:
            shown.append(f"{err.message} {err.details}")
    await deps.http.aclose()
    assert "http://***@127.0.0.1" in shown[0]
    assert SECRET not in " ".join(shown) + repr(heartbeats)


PD_KEY = "e93facc04764012d7bfb002500d5d1a6"
"""A PagerDuty integration key (32 of [a-z0-9]): a valid identifier when it starts with a letter."""


@pytest.mark.parametrize(("route", "secret"), [
    (f"{{kind: pagerduty, routing_key_env: {PD_KEY}}}", PD_KEY),
    (f"{{kind: webhook, url: 'http://h/x', hmac_secret_env: {PD_KEY[::-1]}x}}", PD_KEY[::-1]),
    ("{kind: slack, webhook_url_env: 'hunter2!x'}", "hunter2"),
])
def test_a_secret_pasted_into_an_env_field_is_refused_and_not_echoed(route: str, secret: str) -> None:
    """A key pasted where a variable's name goes passed when it happened to be an identifier (and
    went into the history, then named as the "missing variable" in every failed page); one that
    was refused was echoed whole in the error when short (up to 20 characters)."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy(rest=f"    routes: {{r: {route}}}"), "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path.startswith("services[0].routes.r.") and problem.path.endswith("_env")
    assert "never write its value" in problem.message
    assert secret not in str(caught.value)


@pytest.mark.parametrize("name", ["MEDKIT_PD_ROUTING_KEY", "PAGERDUTYROUTINGKEYFORCHECKOUT",
                                  "pd_key_2024_checkout_service", "MEDKIT_SLACK_URL"])
def test_variable_names_are_still_accepted(name: str) -> None:
    text = policy(rest=f"    routes: {{r: {{kind: pagerduty, routing_key_env: {name}}}}}")
    assert parse_policy(text, "policy.yaml").services[0].routes["r"].kind == "pagerduty"
