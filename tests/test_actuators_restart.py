"""Restart actuators: systemd (recording stand-in), Docker (unix-socket engine), Kubernetes, HTTP.

Kubernetes and Docker are checked against local servers implementing the documented API
contracts, never a live cluster or engine; systemd against a recording systemctl stand-in.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.child_env import REDACTED
from activities.deps import ActivityDeps
from activities.docker import DockerActivities
from activities.http_action import HttpActionActivities
from activities.kubernetes import (
    RESTARTED_AT,
    KubernetesActivities,
    from_kubeconfig,
    in_cluster,
)
from activities.systemd import SystemdActivities
from models.actions import ActionRequest, ActionResult
from models.detection import Detection
from models.phases import Phase, Severity
from models.policy import PolicyFile, ServicePolicy
from tests.conftest import WebhookReceiver, free_port, policy_file
from tests.test_actuators_servers import (
    TOKEN,
    DockerEngine,
    KubeApiServer,
    calls,
    serving,
    write_systemctl,
)
from workers.client import start_or_join_recovery
from workers.worker import build_worker


@pytest.fixture
def deps(tmp_path: Path) -> ActivityDeps:
    """Real activity dependencies with a ledger in tmp."""
    return ActivityDeps.create(tmp_path / "state")


def action(spec: dict[str, Any], dry_run: bool = False, name: str = "act") -> ActionRequest:
    """An action request as the workflow builds it."""
    return ActionRequest.model_validate({"workflow_id": "recovery:svc:t", "service": "svc",
                                         "action_name": name, "spec": spec, "reason": "test",
                                         "dry_run": dry_run})


async def run(fn: Any, request: ActionRequest, activity_id: str = "1",
              activity_type: str = "") -> ActionResult:
    """Run an activity as attempt of step `activity_id` (same id = a retry of the same step)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=activity_id, workflow_id="recovery:svc:t",
                                   activity_type=activity_type or request.spec.activity)
    result: ActionResult = await env.run(fn, request)
    return result


async def fails(fn: Any, request: ActionRequest, activity_id: str = "1") -> ApplicationError:
    """Run an activity that must fail with an ApplicationError; return it."""
    with pytest.raises(ApplicationError) as caught:
        await run(fn, request, activity_id)
    return caught.value


# ----- systemd ------------------------------------------------------------------------------

async def test_systemd_restart_runs_argv_once_per_step(tmp_path: Path, deps: ActivityDeps) -> None:
    systemctl, log = write_systemctl(tmp_path)
    activities = SystemdActivities(deps)
    request = action({"kind": "systemd", "unit": "web.service", "systemctl": str(systemctl),
                      "user": True})
    first = await run(activities.restart_systemd, request)
    again = await run(activities.restart_systemd, request)
    assert first.ok and not first.replayed and again.replayed
    assert calls(log) == [["--user", "restart", "--", "web.service"]]


@pytest.mark.parametrize(("unit", "error_type", "retryable"), [
    ("missing.service", "UnitNotFound", False),
    ("locked.service", "SystemdPermissionDenied", False),
    ("flaky.service", "SystemdRestartFailed", True),
])
async def test_systemd_exit_codes_map_to_retryability(
    tmp_path: Path, deps: ActivityDeps, unit: str, error_type: str, retryable: bool
) -> None:
    systemctl, _ = write_systemctl(tmp_path)
    error = await fails(SystemdActivities(deps).restart_systemd,
                        action({"kind": "systemd", "unit": unit, "systemctl": str(systemctl)}))
    assert error.type == error_type
    assert error.non_retryable is not retryable


async def test_systemd_dry_run_runs_nothing(tmp_path: Path, deps: ActivityDeps) -> None:
    systemctl, log = write_systemctl(tmp_path)
    result = await run(SystemdActivities(deps).restart_systemd, action(
        {"kind": "systemd", "unit": "web.service", "systemctl": str(systemctl)}, dry_run=True))
    assert result.simulated
    assert result.detail == f"dry-run: would run {[str(systemctl), 'restart', '--', 'web.service']}"
    assert calls(log) == []


# ----- Docker -------------------------------------------------------------------------------

async def test_docker_restart_through_the_socket(tmp_path: Path, deps: ActivityDeps) -> None:
    engine = DockerEngine(socket=tmp_path / "docker.sock")
    engine.add("web")
    spec = {"kind": "docker", "container": "web", "socket": str(engine.socket),
            "api_version": "v1.47", "stop_timeout": "7s"}
    with serving(engine):
        result = await run(DockerActivities(deps).restart_docker, action(spec))
        missing = await fails(DockerActivities(deps).restart_docker,
                              action({**spec, "container": "gone"}), activity_id="2")
    assert result.ok and engine.restarts["web"] == 1
    assert result.data["started_at"] != result.data["started_at_before"]
    restart = next(r for r in engine.requests if r.method == "POST")
    assert (restart.path, restart.query, restart.body) == ("/v1.47/containers/web/restart",
                                                           {"t": ["7"]}, None)
    assert missing.type == "ContainerNotFound" and missing.non_retryable
    assert "No such container: gone" in str(missing)


async def test_docker_retry_after_lost_response_does_not_restart_twice(
    tmp_path: Path, deps: ActivityDeps
) -> None:
    engine = DockerEngine(socket=tmp_path / "docker.sock", lose_next_restart_response=True)
    engine.add("web")
    request = action({"kind": "docker", "container": "web", "socket": str(engine.socket)})
    with serving(engine):
        error = await fails(DockerActivities(deps).restart_docker, request)
        retried = await run(DockerActivities(deps).restart_docker, request)
    assert error.type == "DockerEngineError" and not error.non_retryable
    assert "earlier attempt confirmed" in retried.detail
    assert engine.restarts["web"] == 1


async def test_docker_unreachable_socket_is_retryable(tmp_path: Path, deps: ActivityDeps) -> None:
    error = await fails(DockerActivities(deps).restart_docker, action(
        {"kind": "docker", "container": "web", "socket": str(tmp_path / "absent.sock")}))
    assert error.type == "DockerUnreachable" and not error.non_retryable


# ----- Kubernetes credentials ---------------------------------------------------------------

def test_kubeconfig_context_ca_data_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    ca_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    ca_data = base64.b64encode(ca_pem.encode()).decode()
    path = tmp_path / "config"
    path.write_text(f"""
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: a
  cluster: {{server: "https://a.example:6443/", certificate-authority-data: "{ca_data}"}}
- name: b
  cluster: {{server: "https://b.example:6443", certificate-authority: ca.crt}}
users:
- name: u
  user: {{tokenFile: token}}
contexts:
- name: dev
  context: {{cluster: a, user: u}}
- name: prod
  context: {{cluster: b, user: u, namespace: payments}}
""")
    dev = from_kubeconfig(path)
    prod = from_kubeconfig(path, "prod")
    assert (dev.server, dev.namespace, dev.ca_data, dev.token) == ("https://a.example:6443", "default",
                                                                  ca_pem, TOKEN)
    assert (prod.server, prod.namespace, prod.ca_file) == ("https://b.example:6443", "payments",
                                                            str(tmp_path / "ca.crt"))
    assert TOKEN not in repr(dev)
    with pytest.raises(ApplicationError, match="no context named 'nope'"):
        from_kubeconfig(path, "nope")


def test_in_cluster_service_account(tmp_path: Path) -> None:
    for name, text in (("token", TOKEN), ("namespace", "payments"), ("ca.crt", "pem")):
        (tmp_path / name).write_text(text)
    creds = in_cluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                  "KUBERNETES_SERVICE_PORT": "443"})
    assert (creds.server, creds.token, creds.namespace, creds.ca_file) == (
        "https://10.0.0.1:443", TOKEN, "payments", str(tmp_path / "ca.crt"))
    with pytest.raises(ApplicationError, match="not running in a cluster"):
        in_cluster(tmp_path, {})


# ----- Kubernetes rollout restart ----------------------------------------------------------

async def test_rollout_restart_patch_matches_the_api_contract(tmp_path: Path, deps: ActivityDeps) -> None:
    api = KubeApiServer(port=free_port())
    api.add("prod", "statefulset", "db")
    spec = {"kind": "kubernetes_restart", "workload": "statefulset", "name": "db",
            "kubeconfig": str(api.kubeconfig(tmp_path))}
    with serving(api):
        result = await run(KubernetesActivities(deps).restart_kubernetes, action(spec))
    patch = api.requests[-1]
    assert (patch.method, patch.path, patch.content_type) == (
        "PATCH", "/apis/apps/v1/namespaces/prod/statefulsets/db", "application/strategic-merge-patch+json")
    annotations = patch.body["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTARTED_AT] == result.data["restarted_at"]
    datetime.fromisoformat(annotations[RESTARTED_AT])  # RFC 3339, as kubectl writes it
    assert result.data["generation"] == 2


@pytest.mark.parametrize(("namespace", "name", "error_type"), [
    ("locked", "web", "Forbidden"), ("prod", "absent", "NotFound"),
])
async def test_rollout_restart_403_and_404_are_permanent(
    tmp_path: Path, deps: ActivityDeps, namespace: str, name: str, error_type: str
) -> None:
    api = KubeApiServer(port=free_port(), forbidden_namespaces={"locked"})
    api.add("prod", "deployment", "web")
    api.add("locked", "deployment", "web")
    spec = {"kind": "kubernetes_restart", "name": name, "namespace": namespace,
            "kubeconfig": str(api.kubeconfig(tmp_path))}
    with serving(api):
        error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert error.type == error_type and error.non_retryable
    assert TOKEN not in str(error)


@dataclass
class EchoingProxy(KubeApiServer):
    """An authenticating proxy in front of the API server that refuses every request with a 401
    echoing the Authorization header it got: as a Status message, or as a page (a JSON string,
    so not a Status object) with `lead` characters of text before the echo."""

    as_status: bool = True
    lead: int = 20

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        """Refuse, echoing the credential."""
        echoed = f"token rejected: {headers.get('Authorization')}"
        if self.as_status:
            return 401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": echoed, "reason": "Unauthorized", "code": 401}
        return 401, "x" * self.lead + " " + echoed


@pytest.mark.parametrize(("as_status", "lead", "shown"), [
    (True, 20, f"token rejected: Bearer {REDACTED}"),
    (False, 20, f'"{"x" * 20} token rejected: Bearer {REDACTED}"'),
    # the token crosses the 300-character cut: redacted before cutting, no piece of it is left
    (False, 270, f'"{"x" * 270} token rejected: Bearer {REDACTED[:5]}'),
])
async def test_an_api_error_echoing_the_token_keeps_it_out_of_the_error(
    tmp_path: Path, deps: ActivityDeps, as_status: bool, lead: int, shown: str
) -> None:
    """The token comes from a kubeconfig, not the environment, so only the request's own
    credential can tell what to redact; it used to be copied into the error verbatim."""
    proxy = EchoingProxy(port=free_port(), as_status=as_status, lead=lead)
    spec = {"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(proxy.kubeconfig(tmp_path))}
    with serving(proxy):
        error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert error.type == "Unauthorized" and error.non_retryable
    assert error.message == f"rollout restart of deployment prod/web: HTTP 401 {shown}"
    assert TOKEN[:4] not in error.message


def history_failure(err: ApplicationError) -> str:
    """The failure as the workflow history would record it: the message and its cause chain."""
    failure = Failure()
    DataConverter.default.failure_converter.to_failure(
        err, DataConverter.default.payload_converter, failure)
    return str(failure)


def test_a_kubeconfig_that_is_not_yaml_keeps_its_lines_out_of_the_failure(tmp_path: Path) -> None:
    """The YAML error quotes the line it stopped at (here the token's); chained as the cause,
    it travelled with the failure into the history."""
    path = tmp_path / "config"
    path.write_text(f"current-context: dev\nusers:\n- name: u\n  user:\n    token: {TOKEN}: x\n")
    with pytest.raises(ApplicationError) as caught:
        from_kubeconfig(path)
    assert caught.value.type == "KubeConfigError" and caught.value.non_retryable
    assert caught.value.message == f"kubeconfig {path} is not valid YAML (line 5, column 29)"
    assert TOKEN not in history_failure(caught.value)


@pytest.mark.parametrize("ca_data", ["not base64!", base64.b64encode(b"\xff\xfe").decode()])
def test_a_kubeconfig_with_bad_ca_data_is_a_permanent_config_error(tmp_path: Path, ca_data: str) -> None:
    """Undecodable certificate-authority-data used to escape as a plain binascii/Unicode error,
    which Temporal retries although the file will not change between attempts."""
    path = tmp_path / "config"
    path.write_text(json.dumps({
        "current-context": "dev",
        "clusters": [{"name": "a", "cluster": {"server": "https://a.example",
                                               "certificate-authority-data": ca_data}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "dev", "context": {"cluster": "a", "user": "u"}}],
    }))
    with pytest.raises(ApplicationError) as caught:
        from_kubeconfig(path)
    assert caught.value.type == "KubeConfigError" and caught.value.non_retryable
    assert "certificate-authority-data" in caught.value.message


def kubeconfig_with(tmp_path: Path, **cluster: Any) -> Path:
    """A kubeconfig whose one context uses a cluster with these fields, and the test token."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "dev", "clusters": [{"name": "a", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "dev", "context": {"cluster": "a", "user": "u", "namespace": "prod"}}],
    }))
    return path


@pytest.mark.parametrize("cluster", [
    {},  # no server at all
    {"server": "127.0.0.1:6443"},  # no scheme
    {"server": "http://127.0.0.1:99999"},
    {"server": "https://127.0.0.1:6443", "certificate-authority": "missing-ca.crt"},
    {"server": "https://127.0.0.1:6443",
     "certificate-authority-data": base64.b64encode(b"not a certificate").decode()},
])
async def test_an_unusable_api_server_in_the_kubeconfig_is_a_permanent_config_error(
    tmp_path: Path, deps: ActivityDeps, cluster: dict[str, str]
) -> None:
    """A server httpx cannot request, or a CA it cannot load, used to surface only at the
    request: as the retryable KubeApiRetryable ("unreachable"), or as a plain exception
    (ExceptionGroup, FileNotFoundError, ssl.SSLError) that Temporal retries too, though the
    kubeconfig does not change between attempts."""
    spec = {"kind": "kubernetes_restart", "name": "web",
            "kubeconfig": str(kubeconfig_with(tmp_path, **cluster))}
    error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert (error.type, error.non_retryable) == ("KubeConfigError", True)
    assert TOKEN not in history_failure(error)


@dataclass
class TimingOutProxy(KubeApiServer):
    """A proxy in front of the API server that gives up waiting for the request: 408."""

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        """Time out."""
        return 408, {"kind": "Status", "status": "Failure", "message": "request timed out", "code": 408}


async def test_an_api_408_is_retryable(tmp_path: Path, deps: ActivityDeps) -> None:
    """408 asks the client to repeat the request (RFC 9110), and HTTP actions retry it; the
    Kubernetes actions called it KubeRequestInvalid, non-retryable, and gave up at once."""
    proxy = TimingOutProxy(port=free_port())
    spec = {"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(proxy.kubeconfig(tmp_path))}
    with serving(proxy):
        error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert (error.type, error.non_retryable) == ("KubeApiRetryable", False)
    assert error.message == "rollout restart of deployment prod/web: HTTP 408 request timed out"


def _policy(actions: dict[str, Any], probe_port: int, webhook_url: str) -> ServicePolicy:
    """A service whose every ladder runs `actions` once, validated by a TCP probe."""
    return PolicyFile.model_validate({"services": [{
        "name": "svc",
        "probes": [{"kind": "tcp", "name": "up", "port": probe_port}],
        "actions": actions,
        "ladders": {severity: [{"name": "act", "steps": [{"action": name} for name in actions]}]
                    for severity in ("minor", "major", "critical")},
        "validation": {"samples": 1, "interval": "1s"},
        "retry": {"max_attempts": 1},
        "routes": {"oncall": {"kind": "webhook", "url": webhook_url}},
    }]}).services[0]


async def _recover(env: WorkflowEnvironment, deps: ActivityDeps, policy: ServicePolicy,
                   severity: Severity = Severity.MINOR) -> Any:
    queue = f"actuators-{uuid.uuid4().hex[:8]}"
    detection = Detection(detection_id=str(uuid.uuid4()), service="svc",
                          incident_key=f"t-{uuid.uuid4().hex[:8]}", source="cli",
                          severity=severity, detected_at=datetime.now(UTC))
    async with build_worker(env.client, queue, deps, policy_file(policy)):
        handle = await start_or_join_recovery(env.client, detection, policy, queue)
        return await handle.result()


async def test_retried_rollout_restart_patch_is_a_no_op_in_a_real_run(
    ts_env: WorkflowEnvironment, tmp_path: Path, deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    api = KubeApiServer(port=free_port(), lose_next_patch_response=True)
    api.add("prod", "deployment", "web")
    spec = {"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(api.kubeconfig(tmp_path))}
    with serving(api):
        status = await _recover(ts_env, deps, _policy({"rollout": spec}, api.port, webhook_receiver.url))
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert status.phase == Phase.RECOVERED
    assert len(patches) == 2  # the first answer was lost (500), Temporal retried the activity
    assert patches[0].body == patches[1].body
    assert api.objects[("prod", "deployments", "web")]["metadata"]["generation"] == 2
    assert any("rollout restarted" in e.reason for e in status.timeline)


# ----- HTTP admin action --------------------------------------------------------------------

async def test_http_failover_sends_token_body_and_idempotency_key(
    deps: ActivityDeps, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAILOVER_TOKEN", TOKEN)
    request = action({"kind": "http", "url": webhook_receiver.url, "bearer_token_env": "FAILOVER_TOKEN",
                      "body": {"region": "eu-west-2"}}, name="failover")
    result = await run(HttpActionActivities(deps).http_action, request)
    again = await run(HttpActionActivities(deps).http_action, request)
    assert result.ok and again.replayed
    assert webhook_receiver.received == [{"region": "eu-west-2"}]
    headers = webhook_receiver.headers[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Idempotency-Key"] == "recovery:svc:t/test-run/1"
    assert TOKEN not in result.model_dump_json()


async def test_http_action_rejections_and_missing_secret(
    deps: ActivityDeps, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status = 404
    spec = {"kind": "http", "url": webhook_receiver.url, "body": {"to": "standby"}}
    not_found = await fails(HttpActionActivities(deps).http_action, action(spec))
    webhook_receiver.status = 503
    unavailable = await fails(HttpActionActivities(deps).http_action, action(spec), activity_id="2")
    no_secret = await fails(HttpActionActivities(deps).http_action,
                            action({**spec, "bearer_token_env": "MEDKIT_UNSET_TOKEN"}), activity_id="3")
    assert (not_found.type, not_found.non_retryable) == ("NotFound", True)
    assert (unavailable.type, unavailable.non_retryable) == ("HttpActionRetryable", False)
    assert (no_secret.type, no_secret.non_retryable) == ("MissingSecret", True)
    assert "MEDKIT_UNSET_TOKEN" in str(no_secret)


async def test_http_post_with_unknown_outcome_is_not_resent(deps: ActivityDeps) -> None:
    port = free_port()
    request = action({"kind": "http", "url": f"http://127.0.0.1:{port}/rollback"}, name="rollback")
    deps.ledger.begin("recovery:svc:t/test-run/1", workflow_id="recovery:svc:t", service="svc",
                      activity="http_action")
    deps.ledger.progress("recovery:svc:t/test-run/1", sent=True)
    error = await fails(HttpActionActivities(deps).http_action, request)
    dry = await run(HttpActionActivities(deps).http_action,
                    action({"kind": "http", "method": "PUT", "url": "http://127.0.0.1:1/x",
                            "body": {"a": 1}}, dry_run=True))
    assert (error.type, error.non_retryable) == ("OutcomeUnknown", True)
    assert dry.simulated and dry.detail == ('dry-run: would send PUT http://127.0.0.1:1/x with body '
                                            '{"a": 1}, expecting [200, 201, 202, 204]')
    assert json.loads(deps.ledger.begin("recovery:svc:t/test-run/1", workflow_id="w", service="svc",
                                        activity="http_action").progress_json) == {"sent": True}


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:99999/rollback",
     "action 'rollback' cannot request http://127.0.0.1:99999/rollback: its port is not in 1-65535"),
    ("http://admin:s3cr3t/pw@127.0.0.1:8080/rollback",
     "action 'rollback' cannot request http://***@127.0.0.1:8080/rollback: Invalid port"),
])
async def test_an_http_action_url_that_cannot_be_requested_fails_once_for_good(
    deps: ActivityDeps, url: str, message: str
) -> None:
    """A URL httpx refuses before sending (here one the spec validation let through, or never
    saw) used to escape as a plain ExceptionGroup or InvalidURL (retried, though it cannot
    change, with httpx's message quoting the password) after the step was marked sent, so the
    retry of a POST then claimed a request had gone out."""
    valid = action({"kind": "http", "url": "http://127.0.0.1:1/rollback"}, name="rollback")
    request = valid.model_copy(update={"spec": valid.spec.model_copy(update={"url": url})})
    error = await fails(HttpActionActivities(deps).http_action, request)
    assert (error.type, error.non_retryable, error.message) == ("InvalidUrl", True, message)
    assert error.__cause__ is None
    record = deps.ledger.begin("recovery:svc:t/test-run/1", workflow_id="w", service="svc",
                               activity="http_action")
    assert json.loads(record.progress_json) == {"sent": False}


async def test_an_http_action_token_ending_in_a_newline_is_sent_without_it(
    deps: ActivityDeps, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret written from a file usually ends in a newline. Sent as is, h11 refused the
    header, and the step failed (retryably, as an unknown outcome) with a cause quoting it."""
    monkeypatch.setenv("MEDKIT_TEST_ADMIN_TOKEN", "s3cr3t-tok\n")
    result = await run(HttpActionActivities(deps).http_action, action(
        {"kind": "http", "url": webhook_receiver.url, "bearer_token_env": "MEDKIT_TEST_ADMIN_TOKEN",
         "body": {"restart": True}}))
    assert result.ok
    assert webhook_receiver.headers[0]["Authorization"] == "Bearer s3cr3t-tok"


@pytest.mark.parametrize("token", ["s3cr3t\x01tok", "s3cr3t-t\u00f6k", "s3cr3t\ntok"])
async def test_an_http_action_token_no_header_can_carry_is_refused_without_showing_it(
    deps: ActivityDeps, webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """A control character made h11 refuse the header with an error quoting its value, chained
    as the cause of the retryable HttpActionUnknownOutcome: the token went into the history. A
    non-ASCII one escaped as a plain UnicodeEncodeError, retried though the variable cannot
    change. Neither was ever sent."""
    monkeypatch.setenv("MEDKIT_TEST_ADMIN_TOKEN", token)
    error = await fails(HttpActionActivities(deps).http_action, action(
        {"kind": "http", "url": webhook_receiver.url, "bearer_token_env": "MEDKIT_TEST_ADMIN_TOKEN",
         "body": {"restart": True}}))
    assert (error.type, error.non_retryable) == ("InvalidSecret", True)
    assert "env var MEDKIT_TEST_ADMIN_TOKEN" in error.message
    assert "s3cr3t" not in history_failure(error)
    assert webhook_receiver.received == []


async def test_a_kubeconfig_token_no_header_can_carry_is_refused_without_showing_it(
    tmp_path: Path, deps: ActivityDeps
) -> None:
    api = KubeApiServer(port=free_port())
    path = api.kubeconfig(tmp_path)
    path.write_text(path.read_text().replace(TOKEN, "s3cr3t\\u0001tok"))
    spec = {"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(path)}
    with serving(api):
        error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert (error.type, error.non_retryable) == ("KubeConfigError", True)
    assert "s3cr3t" not in history_failure(error)
    assert api.requests == []


@contextlib.contextmanager
def malformed_echo() -> Iterator[int]:
    """A real local server answering every request with a malformed header line that echoes the
    request's Authorization header (a broken proxy); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                    echoed = [line for line in head.split(b"\r\n")
                              if line.lower().startswith(b"authorization")]
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nX-Echo " + b"".join(echoed)
                                 + b"\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_a_malformed_answer_echoing_the_token_stays_out_of_the_failure(
    tmp_path: Path, deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's RemoteProtocolError quotes the illegal header line, here our token; chained as
    the cause of the action's error, it went into the history (and the SDK's failure log)."""
    monkeypatch.setenv("MEDKIT_TEST_ADMIN_TOKEN", TOKEN)
    with malformed_echo() as port:
        error = await fails(HttpActionActivities(deps).http_action, action(
            {"kind": "http", "url": f"http://127.0.0.1:{port}/admin",
             "bearer_token_env": "MEDKIT_TEST_ADMIN_TOKEN"}))
        assert (error.type, error.non_retryable) == ("HttpActionUnknownOutcome", False)
        assert TOKEN not in history_failure(error)
        kube = EchoingProxy(port=port)  # only for its kubeconfig: the malformed server answers
        spec = {"kind": "kubernetes_restart", "name": "web", "kubeconfig": str(kube.kubeconfig(tmp_path))}
        kube_error = await fails(KubernetesActivities(deps).restart_kubernetes, action(spec))
    assert (kube_error.type, kube_error.non_retryable) == ("KubeApiRetryable", False)
    assert TOKEN not in history_failure(kube_error)
