"""The command action against real process trees: a timeout or an abort ends the program's whole
process group, grandchildren included, and the ledger says the program stopped only once it has.

Every program here is a real `python -c` that starts a grandchild (another python that sleeps),
so what medkit must stop is a tree, as a shell script's is; each test kills what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.command import CommandActivities, ProgramGroup, stop_group
from activities.deps import ActivityDeps
from models.actions import ActionRequest, ActionResult
from store.ledger import ActionLedger
from tests.pid_reuse import CAN_REUSE_PIDS, new_group_with_pid

STEP = {"workflow_id": "recovery:svc:t", "workflow_run_id": "run-1", "activity_id": "1"}
"""The step every command here runs as."""

GRANDCHILD = """
import os, sys, time
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
time.sleep(600)
"""
"""Records its pid, then sleeps well past any test: only a signal ends it."""

CHILD = """
import os, signal, subprocess, sys, time
if sys.argv[3] == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
while not open(sys.argv[2]).read():
    time.sleep(0.01)
with open(sys.argv[2], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
print("grandchild started", flush=True)
grandchild.wait()
"""
"""Starts the grandchild (which shares its output), records its own pid after it, and waits."""


def alive(pid: int) -> bool:
    """Whether pid still runs (a zombie has ended; this container's init does not reap orphans)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree_pids(pid_file: Path) -> list[int]:
    """The pids the tree has recorded so far: the grandchild's, then the child's."""
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


class WatchingLedger(ActionLedger):
    """The real ledger, noting which of the tree's processes ran when `running=False` was recorded."""

    def __init__(self, url: str, pid_file: Path) -> None:
        super().__init__(url)
        self.pid_file = pid_file
        self.alive_when_stopped: list[list[int]] = []

    def progress(self, key: str, **values: Any) -> None:
        """Record as the ledger does, first noting the tree's live processes if this says stopped."""
        if values.get("running") is False:
            self.alive_when_stopped.append([pid for pid in tree_pids(self.pid_file) if alive(pid)])
        super().progress(key, **values)


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where the tree records its pids; whatever of it still runs is killed afterwards."""
    path = tmp_path / "tree.pids"
    path.touch()
    yield path
    for pid in tree_pids(path):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


@pytest.fixture
async def deps(tmp_path: Path, pid_file: Path) -> AsyncIterator[ActivityDeps]:
    """Real activity dependencies whose ledger notes what ran when it was told the program stopped."""
    state = tmp_path / "state"
    created = ActivityDeps.create(state)
    watching = WatchingLedger(f"sqlite:///{state / 'medkit.db'}", pid_file)
    yield dataclasses.replace(created, ledger=watching)
    await created.http.aclose()


def tree_argv(pid_file: Path, on_term: str = "die") -> list[str]:
    """A program that starts a sleeping grandchild sharing its output, then waits for it."""
    return [sys.executable, "-c", CHILD, GRANDCHILD, str(pid_file), on_term]


def request(argv: list[str], timeout: str = "60s") -> ActionRequest:
    """A command action step as the workflow builds it."""
    return ActionRequest.model_validate({
        "workflow_id": STEP["workflow_id"], "service": "svc", "action_name": "act", "reason": "test",
        "spec": {"kind": "command", "argv": argv, "timeout": timeout}})


def environment() -> ActivityEnvironment:
    """An activity environment running as the step STEP names."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="run_command", workflow_id=STEP["workflow_id"],
                                   workflow_run_id=STEP["workflow_run_id"], activity_id=STEP["activity_id"])
    return env


def progress(deps: ActivityDeps) -> dict[str, Any]:
    """What the ledger recorded for the step."""
    record = deps.ledger.begin(f"{STEP['workflow_id']}/{STEP['workflow_run_id']}/{STEP['activity_id']}",
                               workflow_id=STEP["workflow_id"], service="svc", activity="run_command")
    recorded: dict[str, Any] = json.loads(record.progress_json)
    return recorded


def watched(deps: ActivityDeps) -> WatchingLedger:
    """The deps' ledger, as the watching kind the fixture made."""
    assert isinstance(deps.ledger, WatchingLedger)
    return deps.ledger


async def test_timeout_kills_the_grandchild_holding_the_output(deps: ActivityDeps, pid_file: Path) -> None:
    """The grandchild keeps the program's output open; the timeout still ends, and ends it."""
    with pytest.raises(ApplicationError) as caught:
        await environment().run(CommandActivities(deps).run_command,
                                request(tree_argv(pid_file), timeout="2s"))

    assert caught.value.type == "CommandTimeout" and not caught.value.non_retryable
    assert "grandchild started" in caught.value.message  # the output so far, for the diagnosis
    pids = tree_pids(pid_file)
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert progress(deps)["running"] is False and watched(deps).alive_when_stopped == [[]]


@pytest.mark.parametrize("on_term", ["die", "ignore_term"])
async def test_cancellation_stops_the_whole_group_before_recording_it_stopped(
    deps: ActivityDeps, pid_file: Path, on_term: str
) -> None:
    """An abort cancels the step while the tree runs: TERM (and KILL, for a tree ignoring TERM)
    reaches every process in it, and `running=False` is recorded only after all are gone."""
    env = environment()

    def heartbeat(*_: Any) -> None:
        if len(tree_pids(pid_file)) == 2:  # both running, the TERM handler set
            env.cancel()

    env.on_heartbeat = heartbeat
    with pytest.raises(asyncio.CancelledError):
        await env.run(CommandActivities(deps).run_command, request(tree_argv(pid_file, on_term)))

    pids = tree_pids(pid_file)
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert progress(deps)["running"] is False and watched(deps).alive_when_stopped == [[]]


async def test_program_leaving_a_background_process_returns_when_it_exits(
    deps: ActivityDeps, pid_file: Path
) -> None:
    """A program that exits and leaves a daemon holding its output is done: its exit code and
    output are returned without waiting for the daemon, which is left running (it was meant to)."""
    argv = ["sh", "-c", f'sleep 600 & echo "$!" > {pid_file}; echo started']
    result: ActionResult = await environment().run(CommandActivities(deps).run_command, request(argv))

    assert result.data == {"exit_code": 0, "output": "started\n"}
    (daemon,) = tree_pids(pid_file)
    assert alive(daemon)
    assert progress(deps)["running"] is False


def no_shebang(tmp_path: Path) -> Path:
    """An executable script without `#!`: exec fails with ENOEXEC (no shell falls back here)."""
    script = tmp_path / "fix.sh"
    script.write_text("echo fixed\n")
    script.chmod(0o755)
    return script


async def test_a_program_the_kernel_cannot_run_is_a_permanent_error(
    deps: ActivityDeps, tmp_path: Path
) -> None:
    """ENOEXEC is a plain OSError, not one of the subclasses that were caught: it escaped as a
    retryable error, three attempts at a file that does not change."""
    script = no_shebang(tmp_path)
    with pytest.raises(ApplicationError) as caught:
        await environment().run(CommandActivities(deps).run_command, request([str(script)]))
    assert (caught.value.type, caught.value.non_retryable) == ("CommandNotFound", True)
    assert "Exec format error" in caught.value.message
    assert progress(deps) == {"running": False}


@pytest.mark.skipif(not CAN_REUSE_PIDS,
                    reason="needs root and ns_last_pid, to make the kernel reuse a pid at once")
async def test_stopping_a_program_never_signals_a_group_that_took_its_pid() -> None:
    """A cancellation can arrive just after the program ended: it was reaped, its group emptied,
    and the kernel may have given its pid, and so its group id, to a new session leader. Stopping
    the program then TERMed and KILLed that unrelated group; now a group id whose pid names
    another process is left alone, and the program counts as stopped."""
    proc = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    with ProgramGroup(proc.pid) as group:
        proc.kill()
        await proc.wait()
        other = new_group_with_pid(proc.pid)
        if other is None:
            pytest.skip(f"could not get pid {proc.pid} reused")
        try:
            assert await stop_group(proc, group, grace=1.0)
            assert other.poll() is None, "the stop reached the group that took the program's pid"
        finally:
            other.kill()
            other.wait()
