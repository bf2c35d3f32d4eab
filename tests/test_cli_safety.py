"""The CLI is safe to point anywhere and to read anything: real subprocesses, real dev server.

Text from outside (summaries, reasons, operator names, search attributes) never reaches the
terminal as control sequences; the fleet coordinator's id, an unknown namespace and a server that
is not there each end in one line on stderr and exit 1, never a traceback or an abort.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from demo.policy import demo_policy
from models import search_attributes as sa
from models.fleet import FleetState, coordinator_workflow_id
from models.status import RecoveryStatus
from tests.conftest import DemoService, eventually, free_port, stop_fleet_coordinator
from tests.test_cli import medkit
from workflows.fleet import FleetCoordinatorWorkflow
from workflows.recovery import RecoveryWorkflow

EVIL_SUMMARY = "\x1b[2J\x1b[31mfake\x1b[0m\nforged line\x9b2J\x07"
EVIL_OPERATOR = "\x1b]0;pwned\x07eve\x1b[5m"
EVIL_REASON = "looks \x1b[32mfine\r\x1b[1Aover"
TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""What no text output may hold: C0/C1 controls but tab and newline, DEL, bidi overrides."""

TEMPORAL_COMMANDS: list[list[str]] = [
    ["status", "recovery:demo:health"],
    ["list"],
    ["trigger", "--service", "demo"],
    *([kind, "recovery:demo:health", "--operator", "alice"]
      for kind in ("approve", "abort", "resolve", "retry")),
    ["watch"],
    ["worker"],
]
"""Every subcommand that talks to Temporal (`dev` runs its own server; `incidents`, `config` and
`detect-csv` never connect; `serve` connects per request and answers 503)."""


@pytest.fixture
def target(dev_env: WorkflowEnvironment) -> dict[str, str]:
    """Environment pointing the CLI at the dev server, on a task queue of the test's own."""
    return {"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
            "MEDKIT_TASK_QUEUE": f"safety-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The demo policy (nothing need listen on its port for these tests)."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(demo_policy(free_port(), tmp_path)))
    return path


def with_config(command: list[str], policy: Path) -> list[str]:
    """The command with the policy it needs: --config where it reads one, else as it is
    (`worker` gets its policy from MEDKIT_CONFIG, which the callers set)."""
    return [*command, "--config", str(policy)] if command[0] in ("trigger", "watch") else command


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 1 with `expected` as the only line on stderr; no traceback, no abort."""
    assert (result.returncode, result.stderr) == (1, expected + "\n"), result.stderr[-3000:]


def test_printable_keeps_text_and_drops_what_a_terminal_would_act_on() -> None:
    from cli.common import printable  # inside: the rest of this file runs without it

    assert printable("\x1b[2J\x1b[31mfake\x1b[0m") == "fake"
    assert printable("a\x1b]0;title\x07b\x1b]8;;http://x\x1b\\c") == "abc"  # titles, hyperlinks
    assert printable("x\x9b2Jy\x90payload\x9cz") == "xyz"  # 8-bit CSI and DCS
    assert printable("one\ntwo\tthree\r\nfour") == "one two three four"
    assert printable("one\ntwo\tthree\r\nfour", multiline=True) == "one\ntwo\tthree\nfour"
    assert printable("bell\x07 nul\x00 del\x7f rlo\u202eend") == "bell nul del rloend"
    assert printable("é ünïcode 日本 -> [ok] 100%") == "é ünïcode 日本 -> [ok] 100%"


async def run_medkit(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`medkit` from a thread, so a worker running in this test's event loop keeps answering."""
    return await asyncio.to_thread(medkit, *args, env=env, timeout=timeout)


async def test_coordinator_id_is_one_line_error_for_status_and_decisions(
    target: dict[str, str], dev_env: WorkflowEnvironment
) -> None:
    """Running, with a worker answering as in production, and then closed: the coordinator has
    no status query and no decision updates, and the CLI says so in one line."""
    client: Client = dev_env.client
    queue = target["MEDKIT_TASK_QUEUE"]
    coordinator = coordinator_workflow_id(queue)
    expected = (f"medkit: {coordinator} is the fleet coordinator, not a recovery (`medkit list` "
                "shows the recoveries)")
    commands = [["status", coordinator], *([kind, coordinator, "--operator", "alice"]
                                           for kind in ("approve", "abort", "resolve", "retry"))]
    async with Worker(client, task_queue=queue, workflows=[FleetCoordinatorWorkflow]):
        try:
            handle = await client.start_workflow(FleetCoordinatorWorkflow.run, FleetState(),
                                                 id=coordinator, task_queue=queue)
            await eventually(lambda: handle.query(FleetCoordinatorWorkflow.leases))  # it runs
            for command in commands:
                assert_one_line_error(await run_medkit(*command, env=target), expected)
        finally:
            await stop_fleet_coordinator(client, queue)
        for command in commands:
            assert_one_line_error(await run_medkit(*command, env=target), expected)


@pytest.mark.parametrize("command", TEMPORAL_COMMANDS, ids=lambda c: c[0])
async def test_unknown_namespace_is_one_line_error(
    command: list[str], target: dict[str, str], policy_file: Path
) -> None:
    env = {**target, "MEDKIT_CONFIG": str(policy_file)}
    result = await run_medkit(*with_config(command, policy_file), "--namespace", "nosuch", env=env)
    expected = (f"medkit: namespace 'nosuch' not found on the Temporal server at "
                f"{target['TEMPORAL_ADDRESS']} (pass --namespace or set TEMPORAL_NAMESPACE)")
    if command[0] == "worker":  # the worker's log lines come first; the error is the last line
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.splitlines()[-1] == expected
    else:
        assert_one_line_error(result, expected)


@pytest.mark.parametrize("command", TEMPORAL_COMMANDS, ids=lambda c: c[0])
async def test_unreachable_server_is_one_plain_line(command: list[str], policy_file: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = await run_medkit(*with_config(command, policy_file), "--address", address,
                              env={"MEDKIT_CONFIG": str(policy_file)})
    assert_one_line_error(result, f"medkit: cannot reach Temporal at {address}: connection "
                          "refused: is the server running? (`medkit dev` starts one)")


def assert_printable(text: str) -> None:
    """No terminal control in `text`: nothing but newlines and tabs below the space."""
    assert not TERMINAL_CONTROL.findall(text), repr(text)


async def test_status_and_decisions_print_outside_text_without_terminal_controls(
    target: dict[str, str], demo_service: DemoService, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """A detection summary, an operator name and a reason full of escape sequences: the text
    output shows their words on their own lines, the JSON output has them exactly."""
    data = demo_policy(demo_service.port, tmp_path)
    services = data["services"]
    assert isinstance(services, list)
    minor = services[0]["ladders"]["minor"]
    minor[0]["steps"][0]["requires_approval"] = True  # so the recovery waits for the operator
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    env = {**target, "MEDKIT_CONFIG": str(policy)}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "medkit"), "worker", "--state-dir",
                               str(tmp_path / "state"), "--metrics-address", "off"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = await run_medkit("trigger", "--service", "demo", "--config", str(policy),
                                   "--severity", "minor", "--key", f"k{uuid.uuid4().hex[:6]}",
                                   "--summary", EVIL_SUMMARY, "-o", "json", env=env)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]
        handle = dev_env.client.get_workflow_handle_for(RecoveryWorkflow.run, workflow_id)

        async def waiting() -> RecoveryStatus | None:
            status = await handle.query(RecoveryWorkflow.status)
            return status if status.pending_decision is not None else None

        await eventually(waiting, timeout=60)
        aborted = await run_medkit("abort", workflow_id, "--operator", EVIL_OPERATOR, "--reason",
                                   EVIL_REASON, env=env)
        assert aborted.returncode == 0, aborted.stderr
        assert_printable(aborted.stdout)
        await handle.result()

        shown = await run_medkit("status", workflow_id, env=env)
        assert shown.returncode == 0, shown.stderr
        assert_printable(shown.stdout)
        report = next(line for line in shown.stdout.splitlines() if "fake" in line)
        assert "fake forged line" in report  # the summary's line break does not forge a line
        assert not any(line.strip().startswith("forged") for line in shown.stdout.splitlines())
        decision = next(line for line in shown.stdout.splitlines() if "looks" in line)
        assert "looks fine over" in decision and "(eve)" in decision

        exact = json.loads((await run_medkit("status", workflow_id, "-o", "json", env=env)).stdout)
        reasons = [entry["reason"] for entry in exact["timeline"]]
        actors = {entry["actor"] for entry in exact["timeline"]}
        assert any(EVIL_SUMMARY in reason for reason in reasons)
        assert any(EVIL_REASON in reason for reason in reasons) and EVIL_OPERATOR in actors
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        await stop_fleet_coordinator(dev_env.client, target["MEDKIT_TASK_QUEUE"])


async def test_list_prints_search_attributes_without_terminal_controls(
    target: dict[str, str], dev_env: WorkflowEnvironment
) -> None:
    """Whoever starts a workflow sets its search attributes; `medkit list` shows them."""
    client = dev_env.client
    phase = "\x1b[2J\x1b]0;pwned\x07Recovering\nforged"
    workflow_id = f"recovery:evil:{uuid.uuid4().hex[:6]}"
    handle = await client.start_workflow(
        "RecoveryWorkflow", id=workflow_id, task_queue=f"nobody-{uuid.uuid4().hex[:6]}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.SERVICE, "evil"),
                                                 SearchAttributePair(sa.PHASE, phase)]))
    try:
        async def listed() -> bool:
            found = [w.id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
            return bool(found)

        await eventually(listed, timeout=30)
        shown = await run_medkit("list", "--service", "evil", env=target)
        assert shown.returncode == 0, shown.stderr
        assert_printable(shown.stdout)
        header, *lines = shown.stdout.splitlines()
        assert header.split()[:3] == ["WORKFLOW", "ID", "PHASE"]
        assert len(lines) == 1 and lines[0].split()[:3] == [workflow_id, "Recovering", "forged"]
        exact = json.loads((await run_medkit("list", "--service", "evil", "-o", "json",
                                             env=target)).stdout)
        assert [row["phase"] for row in exact] == [phase]
    finally:
        await handle.terminate("test finished")


def test_list_refuses_a_service_that_would_rewrite_its_query() -> None:
    """`--service` goes into a visibility query: a value that is no service name is refused by
    the argument parser, before anything connects."""
    result = medkit("list", "--service", "x' OR WorkflowType != 'y")
    assert result.returncode == 2
    assert "is not a service name" in result.stderr
    assert "Traceback" not in result.stderr
