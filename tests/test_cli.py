"""The `medkit` command line as users run it: real subprocesses against the real dev server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from temporalio.api.enums.v1 import RetryState, TimeoutType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from cli import common
from cli import main as cli_main
from cli.dev_cmd import banner
from demo.policy import DEMO_SERVICE, demo_policy, write_demo_policy
from models.status import RecoveryStatus
from store.ledger import ActionLedger
from tests.conftest import DemoService, eventually, free_port, stop_fleet_coordinator
from tests.silencing_proxy import SilencingProxy
from tests.test_gateway import service_policy
from workflows.recovery import RecoveryWorkflow


def medkit(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `medkit ARGS` as a user would (its console script), capturing output."""
    return subprocess.run([str(Path(sys.executable).parent / "medkit"), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def target(dev_env: WorkflowEnvironment) -> dict[str, str]:
    """Environment pointing the CLI at the dev server, on a task queue of the test's own."""
    return {"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "MEDKIT_TASK_QUEUE": f"cli-{uuid.uuid4().hex[:8]}"}


def slow_fix_policy(demo: DemoService, tmp_path: Path) -> Path:
    """The demo policy with a minor ladder whose only action takes three seconds."""
    data: Any = demo_policy(demo.port, tmp_path)
    service = data["services"][0]
    service["actions"]["slow-fix"] = {"kind": "command",
                                      "argv": [sys.executable, "-c", "import time; time.sleep(3)"]}
    service["ladders"]["minor"] = [{"name": "slow-fix", "steps": [{"action": "slow-fix"}]}]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def interruptible_children() -> Iterator[None]:
    """Processes started inside get SIGINT's default action, as from a terminal, even when this
    test run itself was started with SIGINT ignored (a background job of a non-interactive shell
    is). An ignored signal is inherited across exec, and a Python started so rightly stays deaf
    to it, so a Ctrl-C test would wait forever."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def worker_log(state_dir: Path) -> Path:
    """Where `start_worker` writes the log of the worker with state in `state_dir`."""
    return state_dir.parent / f"{state_dir.name}-worker.log"


def demo_policy_env(target: dict[str, str], demo_service: DemoService,
                    tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The demo policy for `demo_service`, written in tmp_path, and the CLI environment that
    points at it and at the test's Temporal."""
    policy = tmp_path / "policy.yaml"
    write_demo_policy(policy, demo_service.port, tmp_path)
    return policy, {**target, "MEDKIT_CONFIG": str(policy)}


def start_worker(target: dict[str, str], state_dir: Path, policy: Path) -> subprocess.Popen[str]:
    """`medkit worker` as a service would run it, with its own policy file in MEDKIT_CONFIG.

    Its log goes to a file beside the state dir, not to a pipe: nobody reads the pipe, so once
    its 64 KB buffer is full the worker blocks on its next log line and stops answering. Its
    metrics endpoint is off: on the default port it would fail to start whenever another worker
    (a running `medkit dev`, another test's) holds that port."""
    with worker_log(state_dir).open("a") as stderr:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "medkit"), "worker", "--state-dir", str(state_dir),
             "--metrics-address", "off"],
            env={**os.environ, **target, "MEDKIT_CONFIG": str(policy)}, stdout=subprocess.DEVNULL,
            stderr=stderr, text=True)


@contextlib.asynccontextmanager
async def running_worker(target: dict[str, str], state_dir: Path, policy: Path,
                         client: Client) -> AsyncIterator[None]:
    """`start_worker`, stopped at the end together with the fleet coordinator it started."""
    worker = start_worker(target, state_dir, policy)
    try:
        yield
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        await stop_fleet_coordinator(client, target["MEDKIT_TASK_QUEUE"])


def test_config_check_reports_every_problem_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: api\n    probes:\n      - kind: http\n        url: ftp://x\n"
                   "    ladders: {minor: [], major: [], critical: []}\n")
    result = medkit("config", "check", str(bad))
    assert result.returncode == 2
    assert "line 5: services[0].probes[0].url: String should match pattern" in result.stderr
    assert "line 6: services[0].ladders.minor: List should have at least 1 item" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(demo_policy(8099, tmp_path)))
    ok = medkit("config", "check", str(good))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK (1 service(s))")


def test_config_check_lists_references_and_field_errors_in_one_run_by_line(tmp_path: Path) -> None:
    """An unknown ladder action and an unknown escalation route were reported only after the
    bad duration was fixed, joined at the service's line: the operator fixed a round and got a
    second. Now one run lists all three, each at its line, in file order."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n"
                   "  - name: api\n"
                   "    probes: [{kind: tcp, name: p, port: 1}]\n"
                   "    escalation:\n"
                   "      routes: [pager]\n"
                   "    ladders:\n"
                   "      minor:\n"
                   "        - name: fix\n"
                   "          steps:\n"
                   "            - action: reboot\n"
                   "            - wait: -5s\n"
                   "      major: [{name: w, steps: [{wait: 1s}]}]\n"
                   "      critical: [{name: w, steps: [{wait: 1s}]}]\n")
    result = medkit("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"medkit: {bad}: 3 problem(s)",
        "  line 5: services[0].escalation.routes[0]: Value error, escalation.routes names unknown "
        "route 'pager' (defined: none)",
        "  line 10: services[0].ladders.minor[0].steps[0].action: Value error, ladders.minor rung "
        "'fix' names unknown action 'reboot' (defined: none)",
        "  line 11: services[0].ladders.minor[0].steps[1].wait: Value error, a duration must not "
        "be negative",
    ]


def test_config_check_reports_an_invalid_shared_route_once_at_the_route(tmp_path: Path) -> None:
    """Every service gets a copy of the file's shared routes, and an invalid one was reported at
    `routes.ops` and again in each service (at the service's line, under a path the file does
    not have). Now once, at the route."""
    bad = tmp_path / "bad.yaml"
    service = ("{name: %s, probes: [{kind: tcp, name: p, port: 1}], escalation: {routes: [ops]}, "
               "ladders: {minor: [{name: w, steps: [{wait: 1s}]}], major: [{name: w, steps: "
               "[{wait: 1s}]}], critical: [{name: w, steps: [{wait: 1s}]}]}}")
    bad.write_text("routes:\n"
                   "  ops: {kind: webhook, url_env: 'OPS URL'}\n"
                   "services:\n"
                   f"  - {service % 'api'}\n"
                   f"  - {service % 'db'}\n")
    result = medkit("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"medkit: {bad}: 1 problem(s)",
        "  line 2: routes.ops.url_env: Value error, 'OPS '... is not an "
        "environment variable name (letters, digits and _, not starting with a digit): name the "
        "variable, never write its value",
    ]


def test_unreachable_server_and_unknown_id_are_one_line_errors(target: dict[str, str]) -> None:
    down = medkit("status", "recovery:demo:health", "--address", "127.0.0.1:1")
    assert down.returncode == 1
    assert down.stderr.startswith("medkit: cannot reach Temporal at 127.0.0.1:1")
    assert len(down.stderr.strip().splitlines()) == 1
    missing = medkit("status", "recovery:nope:health", env=target)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, "medkit: no recovery with id 'recovery:nope:health'")


async def test_trigger_status_list_and_decisions(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    policy = slow_fix_policy(demo_service, tmp_path)
    async with running_worker(target, tmp_path / "state", policy, dev_env.client):
        key = f"k{uuid.uuid4().hex[:6]}"
        started = medkit("trigger", "--service", "demo", "--key", key, "--config", str(policy),
                         "--summary", "cli test", "-o", "json", env=target)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]
        assert workflow_id == f"recovery:demo:{key}"
        wrong = medkit("approve", workflow_id, "--operator", "alice", env=target)
        assert wrong.returncode == 1
        # rejected with the reason: the recovery is remediating, or (on a loaded machine) over
        assert "approve rejected: cannot approve" in wrong.stderr, wrong.stderr
        unknown = medkit("trigger", "--service", "nope", "--config", str(policy), env=target)
        assert unknown.returncode == 1 and "unknown service 'nope'" in unknown.stderr

        async def ended() -> RecoveryStatus | None:
            status: RecoveryStatus = await dev_env.client.get_workflow_handle_for(
                RecoveryWorkflow.run, workflow_id).query(RecoveryWorkflow.status)
            return status if status.outcome is not None else None

        await eventually(ended, timeout=60)
        shown = medkit("status", workflow_id, "-o", "json", env=target)
        status = json.loads(shown.stdout)
        assert {"workflow_id", "service", "phase", "severity", "attempts", "outcome",
                "timeline"} <= status.keys()
        assert status["phase"] == "Recovered" and status["outcome"] == "Recovered"
        assert set(status["timeline"][1]) >= {"at", "from", "to", "reason", "actor"}
        assert status["timeline"][1]["from"] == "Detected"
        listed = medkit("list", "--service", "demo", "--phase", "Recovered", "-o", "json", env=target)
        assert workflow_id in {row["workflow_id"] for row in json.loads(listed.stdout)}


async def test_sigterm_drains_the_running_action_and_the_recovery_survives(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    client: Client = dev_env.client
    policy = slow_fix_policy(demo_service, tmp_path)
    state = tmp_path / "state"
    first = start_worker(target, state, policy)
    try:
        started = medkit("trigger", "--service", "demo", "--config", str(policy), "-o", "json",
                         "--key", f"k{uuid.uuid4().hex[:6]}", env=target)
        workflow_id = json.loads(started.stdout)["workflow_id"]
        handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

        async def acting() -> bool:
            status = await handle.query(RecoveryWorkflow.status)
            return status.current_step is not None and "slow-fix" in status.current_step

        await eventually(acting, timeout=30)
        time.sleep(0.5)  # let the command start
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        assert "shutting down: draining running activities" in worker_log(state).read_text()
        history = await handle.fetch_history()  # no worker runs now: read the server's record
        scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                     for e in history.events if e.HasField("activity_task_scheduled_event_attributes")}
        completed = [scheduled[e.activity_task_completed_event_attributes.scheduled_event_id]
                     for e in history.events if e.HasField("activity_task_completed_event_attributes")]
        assert "run_command" in completed, "the running action finished during the drain"
        second = start_worker(target, state, policy)  # a new worker picks the recovery up where it was
        try:
            result = await handle.result()
        finally:
            second.terminate()
            second.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        await stop_fleet_coordinator(client, target["MEDKIT_TASK_QUEUE"])
    assert result.phase.value == "Recovered"


CRASH_FIX_CODE = ("import os, sys, time\n"
                  "with open(sys.argv[1], 'a') as marker:\n"
                  "    marker.write(f'{os.getpid()}\\n')\n"
                  "time.sleep(600)\n")
"""The crash-fix program: append its pid to the marker file named by its argument, then run
far longer than the test, so it is still running when its worker is killed."""

OUTCOME_NOT_RECORDED = "its outcome was not recorded; medkit does not run it twice"
"""What run_command answers (ApplicationError OutcomeUnknown) when the ledger says an earlier
attempt started the program and never recorded how it ended."""


def crash_fix_policy(demo: DemoService, tmp_path: Path, marker: Path, max_attempts: int) -> Path:
    """The demo policy whose minor ladder is one rung, a `command` action that writes one line
    to `marker` and then runs for ten minutes (its timeout is longer still, so only the
    heartbeat timeout of a dead worker ends an attempt), tried `max_attempts` times."""
    data: Any = demo_policy(demo.port, tmp_path)
    service = data["services"][0]
    service["actions"]["crash-fix"] = {
        "kind": "command", "argv": [sys.executable, "-c", CRASH_FIX_CODE, str(marker)],
        "timeout": "20m"}
    service["ladders"]["minor"] = [{"name": "crash-fix", "steps": [{"action": "crash-fix"}]}]
    service["retry"] = {"max_attempts": max_attempts, "initial_backoff": "1s", "max_backoff": "1s"}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def marker_pids(marker: Path) -> list[int]:
    """The pids the crash-fix program wrote, one line per run of it."""
    return [int(line) for line in marker.read_text().splitlines()] if marker.exists() else []


def kill_crash_fix_programs(marker: Path) -> None:
    """KILL every crash-fix run still alive: they run in a session of their own, so killing
    their worker did not end them. Found by the pids they wrote, checked against their argv
    (a pid may have been reused)."""
    for pid in marker_pids(marker):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if str(marker) in proc.cmdline():
                proc.kill()
                proc.wait(timeout=10)


async def test_sigkill_mid_command_loses_no_recovery_and_never_runs_the_command_twice(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment,
) -> None:
    """The mission's claim, with a real SIGKILL: a worker killed while a `command` action runs
    neither loses the recovery nor runs the command twice.

    The demo service is kept unhealthy, so validation fails whatever the command did and the
    ending is deterministic. A second worker with the same state dir (the action ledger) picks
    the recovery up once the dead worker's heartbeat timeout (ACTION_HEARTBEAT, 30 s) expires:
    the retried attempt finds the step recorded as running and refuses (OutcomeUnknown, not
    retried), the recovery hands over to a human with that refusal in its timeline, and an
    operator's `resolve` ends it Resolved. The marker file must hold exactly one line: one run.
    The policy allows 2 attempts, so the ladder would repeat the rung: the refusal must hand
    over at once (before OUTCOME_UNKNOWN_PATCH, the repeated rung ran the command again)."""
    client: Client = dev_env.client
    marker = tmp_path / "crash-fix.runs"
    policy = crash_fix_policy(demo_service, tmp_path, marker, max_attempts=2)
    env = {**target, "MEDKIT_CONFIG": str(policy)}
    state = tmp_path / "state"
    demo_service.inject("unhealthy")
    first = start_worker(target, state, policy)
    second: subprocess.Popen[str] | None = None
    workflow_id = ""
    try:
        started = medkit("trigger", "--service", DEMO_SERVICE, "--key", f"k{uuid.uuid4().hex[:6]}",
                         "-o", "json", env=env)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]
        handle = client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

        async def status() -> RecoveryStatus | None:
            """The status, or None while no worker answers (the dead one's sticky queue)."""
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                return await handle.query(RecoveryWorkflow.status)
            return None

        async def running_crash_fix() -> bool:
            now = await status()
            return (now is not None and now.current_step is not None
                    and "crash-fix" in now.current_step and len(marker_pids(marker)) == 1)

        await eventually(running_crash_fix, timeout=60)
        first.kill()  # SIGKILL: no drain, no ledger update, no last heartbeat
        assert first.wait(timeout=30) == -signal.SIGKILL
        # the program runs in a session of its own: it outlives its worker, so nobody can know
        # how it ends, and a second copy would run beside it
        assert str(marker) in psutil.Process(marker_pids(marker)[0]).cmdline()
        second = start_worker(target, state, policy)  # same state dir: the same action ledger

        async def handed_over_or_ran_again() -> bool:
            if len(marker_pids(marker)) > 1:
                return True
            now = await status()
            return now is not None and now.pending_decision is not None

        await eventually(handed_over_or_ran_again, timeout=180)
        assert len(marker_pids(marker)) == 1, "the command ran a second time"
        handed = await status()
        assert handed is not None and handed.phase.value == "ManualIntervention", handed
        assert any(OUTCOME_NOT_RECORDED in entry.reason for entry in handed.timeline), (
            handed.timeline)
        handover = [e.reason for e in handed.timeline if e.kind == "transition"][-1]
        assert "outcome is unknown" in handover and "does not run it again" in handover, handover
        assert handed.attempts == 1, "the rung was not tried again"

        history = await handle.fetch_history()
        started_attempts = [e.activity_task_started_event_attributes for e in history.events
                            if e.HasField("activity_task_started_event_attributes")]
        failures = [e.activity_task_failed_event_attributes for e in history.events
                    if e.HasField("activity_task_failed_event_attributes")]
        refused = [f for f in failures if f.failure.application_failure_info.type == "OutcomeUnknown"]
        assert len(refused) == 1, failures
        assert refused[0].failure.application_failure_info.non_retryable
        assert refused[0].retry_state == RetryState.RETRY_STATE_NON_RETRYABLE_FAILURE
        retried = [s for s in started_attempts if s.attempt == 2]  # the killed worker's was 1
        assert len(retried) == 1 and (retried[0].last_failure.timeout_failure_info.timeout_type
                                      == TimeoutType.TIMEOUT_TYPE_HEARTBEAT), started_attempts

        shown = medkit("status", workflow_id, env=env)
        assert shown.returncode == 0 and OUTCOME_NOT_RECORDED in shown.stdout, shown.stdout
        resolved = medkit("resolve", workflow_id, "--operator", "alice", "--reason",
                          "checked the crash-fix by hand", env=env)
        assert resolved.returncode == 0, resolved.stderr
        result = await handle.result()
        assert result.phase.value == "Resolved"
        assert len(marker_pids(marker)) == 1
    finally:
        kill_crash_fix_programs(marker)
        if workflow_id:
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(workflow_id).terminate("test cleanup")
        for worker in (first, second):
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=60)
        await stop_fleet_coordinator(client, target["MEDKIT_TASK_QUEUE"])


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one JSON object a failing command prints on stderr with `-o json`."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    error: dict[str, str] = json.loads(lines[0])
    assert set(error) == {"error", "type"}
    return error


def test_errors_are_json_objects_with_the_same_exit_codes(
    target: dict[str, str], tmp_path: Path
) -> None:
    missing = medkit("status", "recovery:nope:health", "-o", "json", env=target)
    assert missing.returncode == 1 and missing.stdout == ""
    assert json_error(missing) == {"error": "no recovery with id 'recovery:nope:health'",
                                   "type": "RecoveryNotFound"}
    down = medkit("list", "--open", "--address", "127.0.0.1:1", "-o", "json")
    assert down.returncode == 1
    error = json_error(down)
    assert error["type"] == "TemporalUnreachable"
    assert error["error"].startswith("cannot reach Temporal at 127.0.0.1:1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [{name: api}]\n")
    invalid = medkit("trigger", "--service", "api", "--config", str(bad), "-o", "json", env=target)
    assert invalid.returncode == 2 and json_error(invalid)["type"] == "PolicyError"
    text = medkit("status", "recovery:nope:health", env=target)  # text output is unchanged
    assert text.stderr.strip() == "medkit: no recovery with id 'recovery:nope:health'"


def test_warnings_follow_the_output_format_as_errors_do(capsys: pytest.CaptureFixture[str]) -> None:
    """A warning is `medkit: warning: ...` on one line of text, or one JSON object with
    "warning" where an error has "error"; an error keeps its lines, a warning does not."""
    text, as_json = argparse.Namespace(output="text"), argparse.Namespace(output="json")
    common.warn("no worker\x1b[2J polls\nq", text, "NoWorkerAnswered")
    common.fail("bad\x1b[2J\nline", text, "CommandError")
    assert capsys.readouterr().err == "medkit: warning: no worker polls q\nmedkit: bad\nline\n"
    common.warn("no worker\x1b[2J", as_json, "NoWorkerAnswered")
    common.fail("bad\nline", as_json, "CommandError")
    assert [json.loads(line) for line in capsys.readouterr().err.splitlines()] == [
        {"warning": "no worker\x1b[2J", "type": "NoWorkerAnswered"},
        {"error": "bad\nline", "type": "CommandError"}]


def test_usage_errors_follow_the_output_format() -> None:
    """argparse's refusals (exit 2) are JSON error objects under `-o json`, argparse's text otherwise."""
    unknown = medkit("status", "recovery:nope:health", "--bogus", "-o", "json")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert json_error(unknown) == {"error": "medkit status: unrecognized arguments: --bogus",
                                   "type": "UsageError"}
    missing = medkit("status", "--output=json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert json_error(missing) == {"error": "medkit status: the following arguments are required: id",
                                   "type": "UsageError"}
    no_value = medkit("incidents", "show", "-o", "json", "--state-dir")
    assert no_value.returncode == 2
    assert json_error(no_value) == {"error": "medkit incidents show: argument --state-dir: expected one "
                                             "argument", "type": "UsageError"}
    text = medkit("status", "--bogus")
    assert text.returncode == 2 and text.stdout == ""
    assert text.stderr.startswith("usage: medkit status ")
    assert text.stderr.strip().splitlines()[-1] == (
        "medkit status: error: the following arguments are required: id")


def test_arguments_a_model_refuses_name_their_flag_and_exit_2() -> None:
    """An empty `--operator` (as `"$USER"` gives where USER is unset) or a reason over the
    model's limit is a one-line error naming the flag, exit 2, not a traceback; it is refused
    before any connection, so no server is needed."""
    empty = medkit("approve", "recovery:demo:drill", "--operator", "")
    assert empty.returncode == 2 and empty.stdout == ""
    assert empty.stderr.strip() == "medkit: --operator: String should have at least 1 character"
    both = medkit("abort", "recovery:demo:drill", "--operator", "", "--reason", "x" * 2001,
                  "-o", "json")
    assert both.returncode == 2
    assert json_error(both) == {
        "error": "--operator: String should have at least 1 character; --reason: String should "
                 "have at most 2000 characters", "type": "InvalidInput"}


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("argv", [
    ["config", "check", "{policy}"], ["incidents", "--state-dir", "{state}"],
    ["detect-csv", "{csv}"],
])
def test_a_command_whose_stdout_reader_is_gone_stops_quietly_with_141(
        argv: list[str], unbuffered: str, tmp_path: Path) -> None:
    """`medkit ... | head` with head gone before medkit writes: every command ends as a Unix tool
    killed by SIGPIPE does, whether its write fails at once (PYTHONUNBUFFERED) or at the last
    flush. A guarded command used to exit 0 in the first case, as if it had been read, and end
    in a traceback (exit 120) in the second."""
    policy, series = tmp_path / "policy.yaml", tmp_path / "series.csv"
    write_demo_policy(policy, 8099, tmp_path)
    series.write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    ActionLedger(f"sqlite:///{tmp_path / 'medkit.db'}").engine.dispose()  # an empty store
    read, write = os.pipe()
    os.close(read)  # no reader at all: every write to the pipe fails with EPIPE
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "medkit"),
             *(arg.format(policy=policy, state=tmp_path, csv=series) for arg in argv)],
            stdout=write, stderr=subprocess.PIPE, timeout=60, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write)
    assert done.stderr == b""
    assert done.returncode == cli_main.EXIT_BROKEN_PIPE == 141


def test_dev_banner_exports_the_address_and_policy_for_the_cli(tmp_path: Path) -> None:
    """The banner's export line, pasted into a shell, points the CLI at the stack, even when
    the policy's path has a space in it."""
    policy = tmp_path / "my state" / "policy.yaml"
    args = argparse.Namespace(ui_port=8233, temporal_port=7299, state_dir=Path(".medkit"),
                              demo_port=8099)
    export = next(line.strip() for line in banner(args, policy, demo=True).splitlines()
                  if line.strip().startswith("export "))
    shell = subprocess.run(["bash", "-c", f'{export}; printf "%s|%s" "$TEMPORAL_ADDRESS" '
                            '"$MEDKIT_CONFIG"'], capture_output=True, text=True, check=True)
    assert shell.stdout == f"127.0.0.1:7299|{policy}"


async def test_the_demo_approval_flow_through_list_open_watch_and_run_id(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """What the `medkit dev` banner tells a newcomer: a critical recovery of the demo waits for
    approval; `list --open` shows what it waits for, `status --watch` follows it to its end, and
    `approve --run-id` decides for that very run."""
    policy, env = demo_policy_env(target, demo_service, tmp_path)
    worker = start_worker(target, tmp_path / "state", policy)
    watchers: list[subprocess.Popen[str]] = []
    try:
        key = f"k{uuid.uuid4().hex[:6]}"
        started = medkit("trigger", "--service", DEMO_SERVICE, "--severity", "critical", "--key",
                         key, "-o", "json", env=env)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]

        async def waiting_row() -> dict[str, Any] | None:
            listed = await asyncio.to_thread(medkit, "list", "--open", "--service", DEMO_SERVICE,
                                             "-o", "json", env=env)
            rows = [row for row in json.loads(listed.stdout) if row["workflow_id"] == workflow_id]
            return rows[0] if rows and rows[0]["pending_decision"] else None

        row = await eventually(waiting_row, timeout=60)
        assert row["phase"] == "AwaitingApproval" and row["running"]
        assert row["pending_decision"] == ["approve", "abort"]
        table = medkit("list", "--open", "--service", DEMO_SERVICE, env=env).stdout.splitlines()
        assert table[0].split() == ["WORKFLOW", "ID", "PHASE", "SEVERITY", "OUTCOME", "AGE",
                                    "PENDING"]
        shown = next(line.split() for line in table if line.startswith(workflow_id))
        assert shown[1:4] == ["AwaitingApproval", "critical", "running"]
        assert re.fullmatch(r"\d+[smhd]", shown[4]) and shown[5] == "approve/abort"

        watch = subprocess.Popen([str(Path(sys.executable).parent / "medkit"), "status",
                                  workflow_id, "--watch", "--interval", "0.2", "-o", "json"],
                                 env={**os.environ, **env}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        watchers.append(watch)
        assert watch.stdout is not None
        first = json.loads(await asyncio.to_thread(watch.stdout.readline))
        assert first["phase"] == "AwaitingApproval"

        other_run = medkit("approve", workflow_id, "--run-id", str(uuid.uuid4()), "--operator",
                           "alice", "-o", "json", env=env)
        assert other_run.returncode == 1
        assert json_error(other_run)["type"] == "RecoveryNotFound"
        approved = medkit("approve", workflow_id, "--run-id", row["run_id"], "--operator", "alice",
                          "--reason", "drill", "-o", "json", env=env)
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["accepted"] is True

        out, err = await asyncio.to_thread(watch.communicate, timeout=120)
        assert watch.returncode == 0 and "Traceback" not in err, err
        seen = [json.loads(line)["phase"] for line in out.splitlines()]
        assert seen and seen[-1] == "Recovered"  # it followed the run to its end, then exited
        pinned = medkit("status", workflow_id, "--run-id", row["run_id"], "-o", "json", env=env)
        assert json.loads(pinned.stdout)["outcome"] == "Recovered"
        assert not [r for r in json.loads(medkit("list", "--open", "--service", DEMO_SERVICE,
                                                 "-o", "json", env=env).stdout)
                    if r["workflow_id"] == workflow_id]
    finally:
        for watch in watchers:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=30)
        worker.terminate()
        worker.wait(timeout=60)
        await stop_fleet_coordinator(dev_env.client, target["MEDKIT_TASK_QUEUE"])


async def test_status_of_an_ended_run_says_when_it_ran_and_watch_says_it_waits_for_no_new_one(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """The README's drill, a second time: inject a fault, then `medkit status --watch
    recovery:demo:health`. Until the poller reports, the latest run with that id is the previous
    incident's, long ended: the watch printed its outcome with no date and exited 0, which reads
    as "already recovered". Now the status says when the run started and ended (UTC, like
    `medkit incidents show`), and a watch of a run that had already ended says so on stderr."""
    policy, env = demo_policy_env(target, demo_service, tmp_path)
    async with running_worker(target, tmp_path / "state", policy, dev_env.client):
        started = medkit("trigger", "--service", DEMO_SERVICE, "--severity", "critical", "--key",
                         f"k{uuid.uuid4().hex[:6]}", "-o", "json", env=env)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]
        aborted = medkit("abort", workflow_id, "--operator", "alice", env=env)
        assert aborted.returncode == 0, aborted.stderr

        shown = medkit("status", workflow_id, env=env)
        assert shown.returncode == 0, shown.stderr
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
        assert [line for line in shown.stdout.splitlines()
                if re.fullmatch(rf"  started {stamp}, ended {stamp}", line)], shown.stdout

        watched = medkit("status", workflow_id, "--watch", "--interval", "0.2", env=env)
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.startswith(f"{workflow_id}  Aborted"), watched.stdout
        assert re.fullmatch(
            rf"medkit: warning: this run of {workflow_id} had already ended \(Aborted at {stamp}\); "
            r"--watch follows one run and does not wait for a new one: `medkit list --open` "
            r"shows the running recoveries\n", watched.stderr), watched.stderr
        as_json = medkit("status", workflow_id, "--watch", "-o", "json", env=env)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stderr)["type"] == "RunAlreadyEnded", as_json.stderr
        assert json.loads(as_json.stdout)["outcome"] == "Aborted"


async def test_trigger_says_whether_it_started_a_recovery_or_joined_the_running_one(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """A second `medkit trigger` of the drill printed the same id as the first, exit 0, with
    nothing to tell that no new recovery started; the gateway answers started or joined."""
    policy, env = demo_policy_env(target, demo_service, tmp_path)
    async with running_worker(target, tmp_path / "state", policy, dev_env.client):
        args = ["trigger", "--service", DEMO_SERVICE, "--severity", "critical", "--key",
                f"k{uuid.uuid4().hex[:6]}"]
        first = medkit(*args, "-o", "json", env=env)
        assert first.returncode == 0, first.stderr
        workflow_id = json.loads(first.stdout)["workflow_id"]
        assert json.loads(first.stdout)["outcome"] == "started"
        again = medkit(*args, env=env)
        assert (again.returncode, again.stdout) == (0, f"{workflow_id}\n"), again.stderr
        assert again.stderr == (f"medkit: joined the running recovery {workflow_id}: it counts "
                                "this report; no second recovery started\n")
        as_json = medkit(*args, "-o", "json", env=env)
        assert json.loads(as_json.stdout) == {"workflow_id": workflow_id, "outcome": "joined"}
        assert as_json.stderr == ""
        aborted = medkit("abort", workflow_id, "--operator", "alice", env=env)
        assert aborted.returncode == 0, aborted.stderr


async def test_ctrl_c_stops_status_watch_cleanly(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    policy, env = demo_policy_env(target, demo_service, tmp_path)
    async with running_worker(target, tmp_path / "state", policy, dev_env.client):
        started = medkit("trigger", "--service", DEMO_SERVICE, "--severity", "critical", "--key",
                         f"k{uuid.uuid4().hex[:6]}", "-o", "json", env=env)
        workflow_id = json.loads(started.stdout)["workflow_id"]
        with interruptible_children():
            watch = subprocess.Popen([str(Path(sys.executable).parent / "medkit"), "status",
                                      workflow_id, "--watch"], env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert watch.stdout is not None
            first = await asyncio.to_thread(watch.stdout.readline)
            assert first.startswith(workflow_id)  # the first status is out: it is watching
            watch.send_signal(signal.SIGINT)
            _, err = await asyncio.to_thread(watch.communicate, timeout=60)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=30)
        assert watch.returncode == 0 and err == "", err
        aborted = medkit("abort", workflow_id, "--operator", "alice", env=env)
        assert aborted.returncode == 0, aborted.stderr


async def test_decisions_and_status_no_worker_answers_fail_in_time_and_say_why(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """With no worker on the recovery's task queue, `trigger` warns, and `status` and a decision
    give up after --timeout with a one-line error naming the queue (an update used to wait
    forever). The decision is held by Temporal, not lost: a worker started later applies it."""
    policy, env = demo_policy_env(target, demo_service, tmp_path)
    queue = target["MEDKIT_TASK_QUEUE"]
    started = medkit("trigger", "--service", DEMO_SERVICE, "--key", f"k{uuid.uuid4().hex[:6]}",
                     env=env)
    assert started.returncode == 0, started.stderr
    workflow_id = started.stdout.strip()
    assert started.stderr == (f"medkit: warning: no worker polls task queue {queue!r}: the "
                              "recovery waits until `medkit worker` runs there (or pass the "
                              "workers' --task-queue)\n")
    worker = None
    try:
        aborted = medkit("abort", workflow_id, "--operator", "alice", "--timeout", "2", env=env)
        assert aborted.returncode == 1
        assert aborted.stderr.startswith(
            f"medkit: abort: no worker answered within 2s on task queue {queue!r} (no worker "
            "polls it: is `medkit worker` running with that --task-queue?); the abort is not "
            "applied yet, but Temporal keeps it pending"), aborted.stderr
        assert len(aborted.stderr.strip().splitlines()) == 1
        shown = medkit("status", workflow_id, "--timeout", "2", "-o", "json", env=env)
        assert shown.returncode == 1
        assert json_error(shown)["type"] == "NoWorkerAnswered"
        assert "status query: no worker answered within 2s" in json_error(shown)["error"]

        worker = start_worker(target, tmp_path / "state", policy)

        async def ended() -> RecoveryStatus | None:
            status: RecoveryStatus = await dev_env.client.get_workflow_handle_for(
                RecoveryWorkflow.run, workflow_id).query(RecoveryWorkflow.status)
            return status if status.phase.terminal else None

        status = await eventually(ended, timeout=60)
        assert status.phase.value == "Aborted"
        assert any(e.actor == "alice" and e.kind == "decision" for e in status.timeline)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        with contextlib.suppress(Exception):
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test cleanup")
        await stop_fleet_coordinator(dev_env.client, queue)


async def test_a_decision_or_status_when_temporal_stops_answering_says_so_not_that_a_worker_is_missing(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """Temporal falling silent after the command connected (and found the recovery): the update
    and the query then time out as they do when no worker answers, and were answered as such,
    with a worker hint and, for a decision, "Temporal keeps it pending", which is false: the
    decision never reached Temporal. Both now say Temporal does not answer and nothing was
    confirmed, typed as an unreachable Temporal. The proxy falls silent on the request itself:
    the decision by its operator's name, the query by the second request naming the recovery
    (the first is the lookup every command makes)."""
    _, env = demo_policy_env(target, demo_service, tmp_path)
    started = medkit("trigger", "--service", DEMO_SERVICE, "--key", f"k{uuid.uuid4().hex[:6]}",
                     env=env)
    assert started.returncode == 0, started.stderr
    workflow_id = started.stdout.strip()
    operator = f"op-{uuid.uuid4().hex[:8]}"
    try:
        with SilencingProxy(target["TEMPORAL_ADDRESS"], operator.encode()).running() as proxy:
            aborted = medkit("abort", workflow_id, "--operator", operator, "--timeout", "2",
                             env={**env, "TEMPORAL_ADDRESS": proxy.address})
            assert proxy.silent.is_set()
        assert (aborted.returncode, aborted.stderr) == (1, (
            f"medkit: abort: Temporal at {proxy.address} does not answer (it is down or "
            "unreachable; this is not about a worker), so nothing was confirmed: run the command "
            "again once Temporal answers\n"))
        with SilencingProxy(target["TEMPORAL_ADDRESS"], workflow_id.encode(), nth=2).running() as proxy:
            shown = medkit("status", workflow_id, "--timeout", "2", "-o", "json",
                           env={**env, "TEMPORAL_ADDRESS": proxy.address})
            assert proxy.silent.is_set()
        assert shown.returncode == 1
        assert json_error(shown) == {
            "type": "TemporalUnreachable",
            "error": f"status query: Temporal at {proxy.address} does not answer (it is down or "
                     "unreachable; this is not about a worker), so nothing was confirmed: run the "
                     "command again once Temporal answers"}
    finally:
        with contextlib.suppress(Exception):
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test cleanup")


def stuck_policy(tmp_path: Path) -> Path:
    """One service, `stuck`, whose probe hits a closed port and whose ladder only waits: its
    recovery fails validation and waits in ManualIntervention for a human."""
    path = tmp_path / "stuck.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "services": [service_policy("stuck", free_port())]}))
    return path


async def test_a_recovery_terminated_in_temporal_shows_so_and_takes_no_decision(
    target: dict[str, str], tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """A recovery waiting in ManualIntervention that someone terminated in the Temporal UI.
    `medkit status` showed it as if open: its last phase, no outcome, and a decision it waits
    for, with the command to give it; a decision was refused as "already ended as
    ManualIntervention", and `status --watch` never stopped. Now they say it was terminated in
    Temporal, no decision is shown as pending, and the watch ends."""
    policy = stuck_policy(tmp_path)
    env = {**target, "MEDKIT_CONFIG": str(policy)}
    async with running_worker(target, tmp_path / "state", policy, dev_env.client):
        started = medkit("trigger", "--service", "stuck", "--severity", "major", env=env)
        assert started.returncode == 0, started.stderr
        workflow_id = started.stdout.strip()
        handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

        async def waiting_for_a_human() -> bool:
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                return (await handle.query(RecoveryWorkflow.status)).pending_decision is not None
            return False
        await eventually(waiting_for_a_human, timeout=60)
        await handle.terminate("stuck, ended by hand")

        shown = medkit("status", workflow_id, "-o", "json", env=env)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert (status["phase"], status["closed_by_temporal"], status["pending_decision"],
                status["outcome"]) == ("ManualIntervention", "terminated", None, None), status
        text = medkit("status", workflow_id, env=env)
        assert text.returncode == 0, text.stderr
        assert "WAITING FOR" not in text.stdout, text.stdout
        assert ("  ended in Temporal: terminated there (not by medkit) while ManualIntervention; "
                "it takes no decisions (the Temporal UI shows who ended it and why)"
                ) in text.stdout.splitlines(), text.stdout
        watched = medkit("status", workflow_id, "--watch", "--interval", "0.2", "-o", "json",
                         env=env, timeout=60)  # it used to watch forever: no terminal phase
        assert watched.returncode == 0, watched.stderr
        assert json.loads(watched.stdout.splitlines()[-1])["closed_by_temporal"] == "terminated"
        retried = medkit("retry", workflow_id, "--operator", "alice", env=env)
        assert (retried.returncode, retried.stderr) == (1, (
            "medkit: retry rejected: the recovery was terminated in Temporal (not ended by "
            "medkit), so it takes no more decisions\n"))


async def connected(pid: int, address: str) -> bool:
    """Whether process `pid` has a TCP connection open to `address` (host:port)."""
    port = int(address.rsplit(":", 1)[1])
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
               for c in psutil.Process(pid).net_connections(kind="tcp"))


async def test_ctrl_c_during_a_decision_no_worker_answers_exits_130_quietly(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    _, env = demo_policy_env(target, demo_service, tmp_path)
    started = medkit("trigger", "--service", DEMO_SERVICE, "--key", f"k{uuid.uuid4().hex[:6]}",
                     "-o", "json", env=env)
    workflow_id = json.loads(started.stdout)["workflow_id"]
    try:
        with interruptible_children():
            approve = subprocess.Popen([str(Path(sys.executable).parent / "medkit"), "approve",
                                        workflow_id, "--operator", "alice"],
                                       env={**os.environ, **env}, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        try:
            # connected, the command is in asyncio, where Ctrl-C cancels: soon in the update
            await eventually(lambda: connected(approve.pid, target["TEMPORAL_ADDRESS"]),
                             timeout=30)
            await asyncio.sleep(2)
            approve.send_signal(signal.SIGINT)
            out, err = await asyncio.to_thread(approve.communicate, timeout=60)
        finally:
            if approve.poll() is None:
                approve.kill()
                approve.wait(timeout=30)
        assert (approve.returncode, out, err) == (130, "", "")
    finally:
        with contextlib.suppress(Exception):
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test cleanup")


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--port", "99999"], "argument --port: '99999' is not an integer from 1 to 65535"),
    (["serve", "--port", "-1"], "argument --port: '-1' is not an integer from 1 to 65535"),
    (["dev", "--ui-port", "0"], "argument --ui-port: '0' is not an integer from 1 to 65535"),
    (["serve", "--max-body-bytes", "-1"], "argument --max-body-bytes: '-1' is not an integer "
                                          "from 1024 to 1073741824"),
    (["serve", "--max-body-bytes", "0"], "argument --max-body-bytes: '0' is not an integer"),
    (["serve", "--temporal-timeout", "-3"], "argument --temporal-timeout: '-3' is not a number "
                                            "of seconds above 0 and at most 3600"),
    (["serve", "--temporal-timeout", "0"], "argument --temporal-timeout: '0' is not a number"),
    (["serve", "--temporal-timeout", "nan"], "argument --temporal-timeout: 'nan' is not a number"),
    (["list", "--limit", "0"], "argument --limit: '0' is not an integer from 1 to 10000"),
    (["list", "--limit", "-1"], "argument --limit: '-1' is not an integer from 1 to 10000"),
    (["incidents", "--limit", "0"], "argument --limit: '0' is not an integer from 1 to 10000"),
    (["incidents", "--limit", "-3"], "argument --limit: '-3' is not an integer from 1 to 10000"),
    (["status", "x", "--timeout", "0"], "argument --timeout: '0' is not a number of seconds"),
    (["approve", "x", "--operator", "a", "--timeout", "nan"], "argument --timeout: 'nan' is not"),
])
def test_out_of_range_numbers_are_usage_errors_not_tracebacks_or_silent_misbehaviour(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A port beyond 65535 or a negative body limit ended in a traceback (OverflowError,
    ValueError); a zero or NaN timeout, a zero body limit or a --limit of 0 were taken and then
    misbehaved (Temporal "unreachable", every POST 413, a wrong listing)."""
    assert cli_main.run(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err, err
    assert err.startswith(f"usage: medkit {argv[0]}")


@pytest.mark.parametrize(("argv", "message"), [
    (["trigger", "--service", "demo", "--key", ""], "argument --key: '' has no letter, digit"),
    (["trigger", "--service", "demo", "--key", "!!!"], "argument --key: '!!!' has no letter"),
    (["incidents", "show", ""], "argument ID: an empty id"),
    (["serve", "--bogus"], "unrecognized arguments: --bogus"),
    (["incidents", "show", "x", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_empty_keys_and_ids_and_unknown_flags_are_the_subcommands_usage_errors(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A --key of no usable characters became `health` (joining the health recovery); an
    unknown flag on a subcommand showed the top-level usage, not the subcommand's."""
    assert cli_main.run(argv) == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2] if argv[0] == "incidents" and argv[1] == "show" else argv[:1])
    assert err.startswith(f"usage: medkit {command} ")
    assert f"medkit {command}: error: {message}" in err, err


def test_config_check_of_a_missing_file_does_not_suggest_a_flag_it_lacks(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main.run(["config", "check", str(tmp_path / "nope.yaml")]) == 1
    assert capsys.readouterr().err == f"medkit: policy file {tmp_path / 'nope.yaml'} not found\n"


def test_help_states_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "dev", "worker", "watch"):
        with pytest.raises(SystemExit):
            cli_main.run([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        # help text after the choices, not the next option's name
        assert re.search(r"--log-level \{[A-Z,]+\} (?!-)\S", text), (command, text)
    with pytest.raises(SystemExit):
        cli_main.run(["serve", "--help"])
    assert "(default: 10)" in " ".join(capsys.readouterr().out.split())


def test_status_and_list_help_say_what_they_show(capsys: pytest.CaptureFixture[str]) -> None:
    """`medkit status --help` and `medkit list --help` had no description at all: nothing said
    that an id alone means its latest run, which may be a past incident's."""
    for command, says in (("status", "latest run"), ("list", "search attributes")):
        with pytest.raises(SystemExit):
            cli_main.run([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        description = text.split(" positional arguments:")[0].split(" options:")[0]
        assert "]" in description and says in description.rsplit("]", 1)[1], (command, text)


@pytest.mark.parametrize(("variables", "expected"), [
    ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/client.pem",
      "TEMPORAL_TLS_CLIENT_KEY_PATH": "/nonexistent/client.key"},
     "medkit: cannot use /nonexistent/client.pem: No such file or directory"),
    ({"MEDKIT_DATABASE_URL": "not a url"},
     "medkit: cannot open the action ledger at $MEDKIT_DATABASE_URL (not a valid database URL): "),
    ({"MEDKIT_DATABASE_URL": "postgresql+psycopg://medkit@127.0.0.1:pg-secret-pw/medkit"},
     "medkit: cannot open the action ledger at $MEDKIT_DATABASE_URL (not a valid database URL): "),
    ({"MEDKIT_DATABASE_URL": "postgresql+psycopg://medkit:pg-secret-pw@127.0.0.1:1/medkit"},
     "medkit: cannot open the action ledger at postgresql+psycopg://medkit:***@127.0.0.1:1/medkit: "),
    ({"MEDKIT_DATABASE_URL": "mysql://u:pw@h/db"},
     "medkit: no database driver for mysql://u:***@h/db: "),
])
def test_a_worker_that_cannot_start_says_why_in_one_line(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path,
    variables: dict[str, str], expected: str,
) -> None:
    """A TLS file at the wrong path or a database the worker cannot open are first-deploy
    mistakes: one line naming the file or the database (its password hidden), exit 1, and no
    "worker started" before it."""
    policy = tmp_path / "policy.yaml"
    write_demo_policy(policy, demo_service.port, tmp_path)
    done = medkit("worker", "--config", str(policy), "--state-dir", str(tmp_path / "state"),
                  "--metrics-address", "off", env={**target, **variables})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), done.stderr
    assert "Traceback" not in done.stderr and "pg-secret-pw" not in done.stderr + done.stdout
    assert "worker started" not in done.stderr + done.stdout


@pytest.mark.parametrize("metrics", ["off", "127.0.0.1:0"])
def test_every_log_line_of_the_worker_is_json_the_sdk_cores_included(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, metrics: str,
) -> None:
    """A namespace that does not exist makes the SDK's Rust core warn; its line used to reach
    stderr as coloured console text among the JSON lines a log pipeline parses."""
    policy = tmp_path / "policy.yaml"
    write_demo_policy(policy, demo_service.port, tmp_path)
    done = medkit("worker", "--config", str(policy), "--state-dir", str(tmp_path / "state"),
                  "--namespace", f"nope-{uuid.uuid4().hex[:6]}", "--metrics-address", metrics,
                  env=target)
    assert done.returncode == 1
    *logs, last = done.stderr.strip().splitlines()
    assert last.startswith("medkit: namespace "), done.stderr
    for line in [*logs, *done.stdout.splitlines()]:  # the core wrote its lines to stdout
        assert isinstance(json.loads(line), dict), line
    assert "worker started" not in done.stderr  # it never started
