"""What programs medkit starts see of the worker's environment, and what their recorded output says.

Everything here runs real processes: this test process is the worker, so `monkeypatch.setenv`
puts a secret into the worker's environment, and each test checks what a child could see
(`psutil.Process(pid).environ()`, or what the child itself prints) and what the activity
records. Policy checks go through `parse_policy`, as `medkit validate` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import psutil
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.child_env import REDACTED, child_environment, redact
from activities.command import CommandActivities
from activities.deps import ActivityDeps
from activities.http_action import HttpActionActivities
from activities.process import ProcessActivities, ProcessSupervisor
from activities.process_pool import ProcessPool
from activities.scale import ScaleActivities
from activities.systemd import SystemdActivities
from models.actions import ActionRequest, ActionResult
from models.policy_yaml import PolicyError, parse_policy
from tests.conftest import free_port, wait_for_port

SECRET_NAME = "MEDKIT_TEST_API_TOKEN"
"""A worker variable whose name says it holds a secret."""

PLAIN_NAME = "MEDKIT_TEST_ENDPOINT"
"""A worker variable with an innocent name, outside the allowlist."""


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A secret in the worker's environment (and a non-secret one beside it)."""
    value = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_NAME, value)
    monkeypatch.setenv(PLAIN_NAME, "http://internal.example:8080/plain")
    return value


@pytest.fixture
def deps(tmp_path: Path) -> ActivityDeps:
    """Real activity dependencies with a ledger in tmp."""
    return ActivityDeps.create(tmp_path / "state")


@contextlib.contextmanager
def admin_endpoint(status: int, body: Callable[[str | None], bytes]) -> Iterator[str]:
    """A local admin endpoint answering every POST with `status` and `body(its Authorization
    header)`; yields its URL."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            answer = body(self.headers.get("Authorization"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/admin"
    finally:
        server.shutdown()


async def run(fn: Any, spec: dict[str, Any], step: str = "1") -> ActionResult:
    """Run an action activity for service svc as step `step`."""
    request = ActionRequest.model_validate({"workflow_id": "recovery:svc:t", "service": "svc",
                                            "action_name": "act", "spec": spec, "reason": "test"})
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=step, workflow_id="recovery:svc:t",
                                   activity_type=request.spec.activity)
    result: ActionResult = await env.run(fn, request)
    return result


async def fails(fn: Any, spec: dict[str, Any], step: str = "failing") -> ApplicationError:
    """Run an action activity that must fail as step `step`; return its error."""
    with pytest.raises(ApplicationError) as caught:
        await run(fn, spec, step)
    return caught.value


def python(script: str) -> list[str]:
    """An argv running `script` with this interpreter."""
    return [sys.executable, "-c", script]


def printing_file(path: Path, exit_code: int = 0) -> list[str]:
    """An argv printing a file (a secret the program read on its own, e.g. from a config file)."""
    return python(f"import sys; print('config:', open({str(path)!r}).read()); sys.exit({exit_code})")


# ----- command action -----------------------------------------------------------------------

async def test_command_running_env_shows_no_worker_secret(secret: str, deps: ActivityDeps) -> None:
    result = await run(CommandActivities(deps).run_command,
                       {"kind": "command", "argv": ["env"], "env": {"GIVEN": "by-the-policy"}})
    output = str(result.data["output"])
    assert secret not in output and secret not in result.model_dump_json()
    assert SECRET_NAME not in output  # scrubbed, not merely redacted
    assert PLAIN_NAME not in output  # nothing outside the allowlist unless asked for
    assert "PATH=" in output and "GIVEN=by-the-policy" in output


async def test_inherit_env_passes_a_named_worker_variable(secret: str, deps: ActivityDeps) -> None:
    script = (f"import os, sys; print(os.environ[{PLAIN_NAME!r}]); "
              f"sys.exit(0 if os.environ[{SECRET_NAME!r}] == {secret!r} else 1)")
    result = await run(CommandActivities(deps).run_command, {
        "kind": "command", "argv": python(script), "inherit_env": [PLAIN_NAME, SECRET_NAME]})
    assert result.data["exit_code"] == 0
    # a variable passed on purpose is still kept out of the record
    assert result.data["output"] == f"{REDACTED}\n"


async def test_inherit_env_not_set_on_the_worker_is_permanent(deps: ActivityDeps) -> None:
    error = await fails(CommandActivities(deps).run_command, {
        "kind": "command", "argv": ["true"], "inherit_env": ["MEDKIT_TEST_NEVER_SET"]})
    assert error.type == "MissingEnv" and error.non_retryable
    assert "MEDKIT_TEST_NEVER_SET" in error.message


async def test_command_output_echoing_a_secret_is_redacted(
    secret: str, deps: ActivityDeps, tmp_path: Path
) -> None:
    config = tmp_path / "app.conf"
    config.write_text(f"token={secret}")
    activities = CommandActivities(deps)
    result = await run(activities.run_command, {"kind": "command", "argv": printing_file(config)})
    assert result.data["output"] == f"config: token={REDACTED}\n"
    error = await fails(activities.run_command,
                        {"kind": "command", "argv": printing_file(config, exit_code=3)})
    assert error.type == "CommandFailed" and "exited 3" in error.message
    assert secret not in error.message and f"token={REDACTED}" in error.message


async def test_scale_command_output_is_redacted(
    secret: str, deps: ActivityDeps, tmp_path: Path
) -> None:
    config = tmp_path / "app.conf"
    config.write_text(secret)
    scale = ScaleActivities(deps, ProcessPool(deps.state_dir, ProcessSupervisor(deps.state_dir)))
    argv = [*printing_file(config, exit_code=1), "{replicas}"]
    error = await fails(scale.scale_command, {"kind": "scale_command", "replicas": 2, "argv": argv})
    assert error.type == "CommandFailed"
    assert secret not in error.message and REDACTED in error.message


async def test_systemctl_gets_the_user_bus_but_no_secret_and_its_output_is_redacted(
    secret: str, deps: ActivityDeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    seen = tmp_path / "env.json"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump(dict(os.environ), open({str(seen)!r}, 'w'))\n"
        f"print('Job failed; token was', {secret!r})\n"
        "sys.exit(1)\n"
    )
    systemctl.chmod(0o755)
    error = await fails(SystemdActivities(deps).restart_systemd,
                        {"kind": "systemd", "unit": "web.service", "systemctl": str(systemctl),
                         "user": True})
    assert error.type == "SystemdRestartFailed"
    assert secret not in error.message and REDACTED in error.message
    environ = json.loads(seen.read_text())
    assert SECRET_NAME not in environ and PLAIN_NAME not in environ
    assert environ["XDG_RUNTIME_DIR"] == str(tmp_path)


# ----- spawned services ---------------------------------------------------------------------

def environ_of(pid: int) -> dict[str, str]:
    """The environment the kernel shows for pid (what any same-user process can read)."""
    environ: dict[str, str] = psutil.Process(pid).environ()
    return environ


async def test_restarted_service_cannot_read_worker_secrets(
    secret: str, deps: ActivityDeps, tmp_path: Path
) -> None:
    port = free_port()
    supervisor = ProcessSupervisor(deps.state_dir)
    spec = {"kind": "restart_process", "pid_file": str(tmp_path / "demo.pid"),
            "argv": [sys.executable, "-m", "demo.service", "--port", str(port)],
            "env": {"DEMO_MODE": "test"}, "grace": "2s",
            "ready_probe": {"kind": "http", "url": f"http://127.0.0.1:{port}/healthz"}}
    result = await run(ProcessActivities(deps, supervisor).restart_process, spec)
    pid = int(str(result.data["new_pid"]))
    try:
        environ = environ_of(pid)
        assert secret not in environ.values()
        assert SECRET_NAME not in environ and PLAIN_NAME not in environ
        assert environ["DEMO_MODE"] == "test" and "PATH" in environ
    finally:
        await supervisor.stop(pid, 2.0)


async def test_pool_replicas_get_only_the_allowlist_and_what_the_spec_names(
    secret: str, deps: ActivityDeps
) -> None:
    base = free_port()
    scale = ScaleActivities(deps, ProcessPool(deps.state_dir, ProcessSupervisor(deps.state_dir)))
    spec: dict[str, Any] = {"kind": "scale_pool", "replicas": 1, "base_port": base,
                            "max_replicas": 1, "grace": "2s", "inherit_env": [PLAIN_NAME],
                            "argv": [sys.executable, "-m", "demo.service", "--port", "{port}"]}
    try:
        await run(scale.scale_process_pool, spec, "1")
        wait_for_port(base)
        pid = int((deps.state_dir / "pools" / "svc" / f"{base}.pid").read_text())
        environ = environ_of(pid)
        assert secret not in environ.values() and SECRET_NAME not in environ
        assert environ[PLAIN_NAME] == "http://internal.example:8080/plain"
    finally:
        await run(scale.scale_process_pool, {**spec, "replicas": 0}, "cleanup")


# ----- the building blocks ------------------------------------------------------------------

def test_child_environment_allowlist_inherit_and_extra() -> None:
    worker = {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "HTTP_PROXY": "http://u:p@proxy:3128",
              "KUBECONFIG": "/etc/kube", "GITHUB_TOKEN": "ghp_abcdef", "HOME": "/root"}
    assert child_environment({}, environ=worker) == {
        "PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env = child_environment({"HOME": "/srv/app"}, ["KUBECONFIG"], environ=worker)
    assert env == {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "HOME": "/srv/app",
                   "KUBECONFIG": "/etc/kube"}


def test_redact_secret_looking_names_named_variables_and_not_short_values() -> None:
    worker = {"DB_Password": "hunter22", "SESSION_ID": "42", "SIGNING_KEY": "hunter22-long",
              "KUBECONFIG": "/etc/kube/config", "PATH": "/usr/bin"}
    text = "pw hunter22, key hunter22-long, session 42, kube /etc/kube/config, path /usr/bin"
    assert redact(text, environ=worker) == (
        f"pw {REDACTED}, key {REDACTED}, session 42, kube /etc/kube/config, path /usr/bin")
    assert f"kube {REDACTED}," in redact(text, ["KUBECONFIG"], environ=worker)


# ----- policy validation --------------------------------------------------------------------

POLICY = """
services:
  - name: web
    probes: [{kind: tcp, port: 8080}]
    actions:
      call: {kind: http, url: "http://127.0.0.1:8080/admin/restart", headers: %s}
      fix: {kind: command, argv: ["true"], env: %s, inherit_env: %s}
    routes:
      hook: {kind: webhook, url_env: %s}
    ladders:
      minor: [{name: a, steps: [{action: fix}]}]
      major: [{name: a, steps: [{action: fix}]}]
      critical: [{name: a, steps: [{action: fix}]}]
"""


def problems(headers: str = "{}", env: str = "{}", inherit_env: str = "[]",
             url_env: str = "HOOK_URL") -> dict[str, str]:
    """Field path → message of each problem parse_policy finds (empty when the policy is valid)."""
    try:
        parse_policy(POLICY % (headers, env, inherit_env, url_env))
    except PolicyError as err:
        return {problem.path: problem.message for problem in err.problems}
    return {}


def test_a_policy_with_plain_headers_and_env_names_is_valid() -> None:
    assert problems(headers="{X-Request-Source: medkit}", env="{MODE: prod}",
                    inherit_env="[KUBECONFIG]") == {}


@pytest.mark.parametrize("header", ["Authorization", "cookie", "Proxy-Authorization", "SET-COOKIE"])
def test_credential_headers_are_refused(header: str) -> None:
    found = problems(headers=f"{{{header}: 'Bearer abc123', X-Other: ok}}")
    message = found["services[0].actions.call.headers"]
    assert header in message and "bearer_token_env" in message and "X-Other" not in message


@pytest.mark.parametrize(("headers", "expected"), [
    ("{X-Mode: \"caf\\u00e9\"}", "header X-Mode's value holds a character no request can carry"),
    ("{X-Mode: \"a\\nb\"}", "header X-Mode's value holds a character no request can carry"),
    ("{'X Mode': a}", "header name 'X Mode' is not an HTTP token"),
])
def test_headers_no_request_can_carry_are_refused(headers: str, expected: str) -> None:
    """Before, such a header passed `config check` and failed every attempt of the action (a
    plain, retried error) when it mattered."""
    found = problems(headers=headers)
    assert expected in found["services[0].actions.call.headers"]


@pytest.mark.parametrize(("field", "value", "path"), [
    ("url_env", "'https://hooks.example/T0/B0/abc'", "services[0].routes.hook.url_env"),
    ("inherit_env", "['1ST_VAR']", "services[0].actions.fix.inherit_env[0]"),
    ("env", "{'NOT-A-NAME': x}", "services[0].actions.fix.env.NOT-A-NAME.[key]"),
])
def test_bad_env_names_are_refused(field: str, value: str, path: str) -> None:
    found = problems(**{field: value})
    assert list(found) == [path]
    assert "not an environment variable name" in found[path]


async def test_an_http_action_response_echoing_the_token_is_redacted(
    secret: str, deps: ActivityDeps
) -> None:
    """An admin endpoint that echoes the request's Authorization header cannot put the worker's
    token into the result (and so the history)."""
    def echo(authorization: str | None) -> bytes:
        return json.dumps({"you_sent": authorization}).encode()

    with admin_endpoint(200, echo) as url:
        result = await run(HttpActionActivities(deps).http_action, {
            "kind": "http", "url": url, "bearer_token_env": SECRET_NAME,
        })
    assert result.ok
    assert secret not in result.model_dump_json()
    assert f"Bearer {REDACTED}" in str(result.data["body"])


VARIABLE_NAMES = [SECRET_NAME, "MEDKIT_ADMIN_BEARER"]
"""A token's variable under a name `redact` recognises as secret, and under one it does not."""


@pytest.mark.parametrize("variable", VARIABLE_NAMES)
async def test_an_http_action_rejection_echoing_the_token_keeps_it_out_of_the_error(
    deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """A 401 page that echoes the credential it refused cannot put it into the error, and so
    into the history, the timeline and the worker's log line, even when the variable holding it
    has a name that does not look secret (MEDKIT_ADMIN_BEARER); the error reads the same either way."""
    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv(variable, token)

    def refuse(authorization: str | None) -> bytes:
        return f"invalid credential: {authorization}".encode()

    with admin_endpoint(401, refuse) as url:
        err = await fails(HttpActionActivities(deps).http_action, {
            "kind": "http", "url": url, "bearer_token_env": variable,
        })
    assert err.type == "Unauthorized" and err.non_retryable
    assert err.message == f"POST {url} answered HTTP 401: invalid credential: Bearer {REDACTED}"


def echo_authorization(authorization: str | None) -> bytes:
    """An admin endpoint's answer echoing the Authorization header it got, twice: as sent,
    and its credential alone."""
    credential = (authorization or "").partition(" ")[2]
    return json.dumps({"you_sent": authorization, "credential": credential}).encode()


async def echoed_body(deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch, variable: str,
                      token: str, step: str) -> str:
    """The recorded body of an http action whose token, in `variable`, the endpoint echoes."""
    monkeypatch.setenv(variable, token)
    try:
        with admin_endpoint(200, echo_authorization) as url:
            result = await run(HttpActionActivities(deps).http_action, {
                "kind": "http", "url": url, "bearer_token_env": variable}, step)
    finally:
        monkeypatch.delenv(variable)
    assert result.ok and token not in result.model_dump_json()
    return str(result.data["body"])


async def test_an_echoed_token_reads_the_same_whatever_its_variable_is_named(
    deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded body must not depend on whether `redact` knows the variable's name: once
    it redacted a recognised token before the request's own credential was looked for, leaving
    `Bearer [redacted]`, while an unrecognised one became `[redacted]`."""
    token = f"tok-{uuid.uuid4().hex}"
    bodies = [await echoed_body(deps, monkeypatch, variable, token, variable)
              for variable in VARIABLE_NAMES]
    expected = json.dumps({"you_sent": f"Bearer {REDACTED}", "credential": REDACTED})
    assert bodies == [expected, expected]


@pytest.mark.parametrize("variable", VARIABLE_NAMES)
@pytest.mark.parametrize(("other", "shown"), [("inside", f"Bearer {REDACTED}"), ("overlapping", REDACTED)])
async def test_a_token_sharing_text_with_another_secret_is_hidden_whole(
    deps: ActivityDeps, monkeypatch: pytest.MonkeyPatch, variable: str, other: str, shown: str
) -> None:
    """Another worker secret inside the token, or overlapping its start (a stored header value
    `Bearer tok-...`), must not split it: once the other secret was replaced first and the rest
    of the token was left in clear. The whole stretch the two cover becomes one marker."""
    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("MEDKIT_TEST_SIGNING_KEY",
                       token[8:24] if other == "inside" else f"Bearer {token[:12]}")
    body = await echoed_body(deps, monkeypatch, variable, token, f"{variable}-{other}")
    assert body == json.dumps({"you_sent": shown, "credential": REDACTED})
    for piece in (token[:8], token[12:20], token[-8:]):
        assert piece not in body


@pytest.mark.parametrize(("secrets", "text", "expected"), [
    (["s3cret-long-value", "long-v"], "a s3cret-long-value b", f"a {REDACTED} b"),
    (["aaaa-bbbb", "bbbb-cccc"], "x aaaa-bbbb-cccc y", f"x {REDACTED} y"),
    (["first-secret", "second-secret"], "first-secretsecond-secret!", f"{REDACTED}!"),
    (["redacted", "s3cret-value"], "s3cret-value and redacted", f"{REDACTED} and {REDACTED}"),
    (["abcabc"], "abcabcabc", REDACTED),
    ([], "nothing to hide", "nothing to hide"),
])
def test_redact_hides_each_stretch_of_secrets_with_one_marker(
    secrets: list[str], text: str, expected: str
) -> None:
    worker = {f"SECRET_{n}": value for n, value in enumerate(secrets)}
    assert redact(text, environ=worker) == expected
