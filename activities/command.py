"""The command action: run an argv (never a shell) with a timeout and check its exit code.

The program gets a scrubbed environment (`child_environment`) and its output is redacted of
secret values (`redact`) before it goes anywhere: the output is kept in the result and in error
messages, both of which end up in the workflow history. systemd and scale_command run their
programs through `run_argv` too.

The program runs in a session (and so a process group) of its own, and whatever ends it early
ends the whole group: a timeout KILLs it, a cancellation (the recovery was aborted) TERMs it and
KILLs what is left after `CANCEL_GRACE`. Its output goes to an unnamed temporary file rather
than a pipe, so a grandchild that keeps the output open never keeps medkit waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import IO

import psutil
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.child_env import child_environment, redact, unrunnable
from activities.deps import ActivityDeps
from activities.heartbeat import uninterrupted
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from activities.process_signal import PinnedProcess
from models.actions import OUTCOME_UNKNOWN, ActionRequest, ActionResult, CommandAction

OUTPUT_LIMIT = 4000
"""How much of a command's output is kept in the result and the history."""

OUTPUT_READ = 64 * 1024
"""How many bytes of the output's end are read: enough for OUTPUT_LIMIT characters after
redaction, without reading a chatty program's whole output into memory."""

CANCEL_GRACE = 5.0
"""Seconds a cancelled program's group gets between SIGTERM and SIGKILL."""

KILL_WAIT = 10.0
"""Seconds to wait for a KILLed group to be gone before saying it may still run."""

POLL = 0.05
"""Seconds between checks whether the program's group is gone."""

COMMAND_HEARTBEAT_EVERY = 1.0
"""Seconds between heartbeats while a program runs or is being stopped."""


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to every process of the group; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProgramGroup:
    """The process group a program leads, started in a session of its own: its id is the
    program's pid, and the program is pinned (activities/process_signal.py) just after its start,
    so whether it still exists is known even once its pid names another process.

    Use as a context manager; it releases the pin."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        try:
            self._leader: PinnedProcess | None = PinnedProcess(pgid)
        except psutil.NoSuchProcess:
            self._leader = None

    def ours(self) -> bool:
        """Whether the group id can still be the program's group.

        Once the program has ended and been reaped and the rest of its group has ended, the
        kernel may hand its pid to a new process, and a new session leader makes that pid a
        group id again: a signal to the group would reach that unrelated group. So: the program
        itself still there (running, or not yet reaped) means the group is its own; no process
        with its pid means only the program's own leftover children can hold the group id; any
        other process with its pid means the group is not the program's.
        """
        if self._leader is not None and self._leader.alive():
            return True
        return not psutil.pid_exists(self.pgid)

    def signal(self, sig: signal.Signals) -> None:
        """`signal_group`, only while the group is the program's (see `ours`)."""
        if self.ours():
            signal_group(self.pgid, sig)

    def members(self) -> list[int]:
        """Pids of the group's live processes; none once the group id is not the program's."""
        return _group_members(self.pgid) if self.ours() else []

    def __enter__(self) -> ProgramGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._leader is not None:
            self._leader.close()


def _group_exists(pgid: int) -> bool:
    """Whether any process (a zombie included) is still in the group."""
    try:
        with contextlib.suppress(PermissionError):  # it exists, only not ours to signal
            os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    """Pids of the group's live processes (zombies have ended; they only wait to be reaped)."""
    if not _group_exists(pgid):
        return []
    members = []
    for proc in psutil.process_iter():  # the group first: a status is read for members only
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


async def _group_gone(group: ProgramGroup, within: float) -> bool:
    """Wait up to `within` seconds for the group to have no live process; whether it has none."""
    deadline = asyncio.get_running_loop().time() + within
    last_beat = 0.0
    while group.members():
        now = asyncio.get_running_loop().time()
        if now >= deadline:
            return False
        if now - last_beat >= COMMAND_HEARTBEAT_EVERY:
            activity.heartbeat({"stopping": group.pgid})
            last_beat = now
        await asyncio.sleep(POLL)
    return True


async def stop_group(proc: asyncio.subprocess.Process, group: ProgramGroup, grace: float) -> bool:
    """End the program's whole process group: TERM, then KILL after `grace` (at once if 0).

    Waits for the program itself to be reaped and for the rest of its group to end; returns
    whether the group is gone (a process stuck in uninterruptible sleep can outlive SIGKILL; one
    that left the group with setsid is beyond reach, as it chose). A group id that has become
    another group's is never signalled (ProgramGroup.ours).
    """
    if grace > 0:
        group.signal(signal.SIGTERM)
        if await _group_gone(group, grace):
            await proc.wait()
            return True
    group.signal(signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_WAIT)
    return proc.returncode is not None and await _group_gone(group, KILL_WAIT)


async def _start(spec: CommandAction, env: dict[str, str], output: IO[bytes]) -> asyncio.subprocess.Process:
    """Start the program in a new session, so its whole process group can be stopped."""
    try:
        return await asyncio.create_subprocess_exec(
            *spec.argv, cwd=spec.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=output, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as err:
        if not unrunnable(err):
            raise
        raise ApplicationError(
            f"cannot run {spec.argv[0]!r}: {err}", type="CommandNotFound", non_retryable=True
        ) from err


async def _exited_in_time(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """Wait for the program to exit, heartbeating; False if `timeout` seconds passed first."""
    waiter = asyncio.ensure_future(proc.wait())
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while not waiter.done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait({waiter}, timeout=min(remaining, COMMAND_HEARTBEAT_EVERY))
            activity.heartbeat({"pid": proc.pid})
        return True
    finally:
        waiter.cancel()


def _tail(output: IO[bytes], inherit_env: list[str]) -> str:
    """The end of what the program wrote, redacted of secret values, at most OUTPUT_LIMIT long."""
    output.seek(0, os.SEEK_END)
    output.seek(max(0, output.tell() - OUTPUT_READ))
    text = redact(output.read().decode(errors="replace"), inherit_env)
    return text[-OUTPUT_LIMIT:]


async def _stop(proc: asyncio.subprocess.Process, group: ProgramGroup, grace: float,
                stopped: Callable[[], Awaitable[None]]) -> bool:
    """`stop_group`, calling `stopped` if the group is gone; whether it is."""
    gone = await stop_group(proc, group, grace)
    if gone:
        await stopped()
    return gone


async def _nothing_to_record() -> None:
    """The default `stopped` of `run_argv`: a caller outside an action step records nothing."""


async def run_argv(spec: CommandAction, inherit: tuple[str, ...] = (),
                   stopped: Callable[[], Awaitable[None]] = _nothing_to_record) -> tuple[int, str]:
    """Run the command, heartbeating while it runs; return its exit code and tail of its output.

    The output is redacted of secret values, those of the spec's `inherit_env` included.
    `inherit` adds worker variables the caller itself needs passed (systemctl's bus address).
    `stopped` is called once the program no longer runs (it exited, never started, or its
    group was stopped and is gone), so a caller records that only when it is true; what the
    program left running in the background after exiting on its own is its business.
    A timeout KILLs the group and fails with CommandTimeout; a cancellation stops the group
    (TERM, KILL after CANCEL_GRACE), waits for it to be gone and is then re-raised.
    """
    with tempfile.TemporaryFile() as output:
        try:
            env = child_environment(spec.env, [*spec.inherit_env, *inherit])
            proc = await _start(spec, env, output)
        except ApplicationError:
            await stopped()
            raise
        with ProgramGroup(proc.pid) as group:
            try:
                exited = await _exited_in_time(proc, spec.timeout.total_seconds())
            except asyncio.CancelledError:
                await uninterrupted(_stop(proc, group, CANCEL_GRACE, stopped))
                raise
            if not exited:
                gone = await uninterrupted(_stop(proc, group, 0, stopped))
                tail = _tail(output, spec.inherit_env)[-300:].strip()
                raise ApplicationError(
                    f"{spec.argv[0]} timed out after {spec.timeout.total_seconds():.0f}s"
                    f"{'' if gone else '; part of it may still run after SIGKILL'}"
                    f"{f': {tail}' if tail else ''}",
                    type="CommandTimeout",
                )
        await stopped()
        code = proc.returncode if proc.returncode is not None else -1
        return code, _tail(output, spec.inherit_env)


async def run_at_most_once(step: ActionStep, spec: CommandAction, refusal: str,
                           inherit: tuple[str, ...] = ()) -> tuple[int, str]:
    """`run_argv` for an action step, never twice: the step records that the program is running,
    so an attempt after a crash mid-run (which cannot know whether the program did its work)
    fails with `refusal`, non-retryably, instead of running it again.

    `running` goes back to false only once the program has really stopped: a group that a
    cancellation or timeout could not be sure to end keeps the step marked running."""
    if step.progress.get("running"):
        raise ApplicationError(refusal, type=OUTCOME_UNKNOWN, non_retryable=True)
    await step.record(running=True)

    async def stopped() -> None:
        await step.record(running=False)

    return await run_argv(spec, inherit, stopped=stopped)


class CommandActivities:
    """The command action activity."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="run_command")
    async def run_command(self, request: ActionRequest) -> ActionResult:
        """Run the command once for this step; a retry after a crash mid-run does not run it again."""
        spec = action_spec(request, CommandAction)

        def dry_run() -> DryRun:
            return DryRun(f"would run {spec.argv}")

        async def perform(step: ActionStep) -> ActionResult:
            code, output = await run_at_most_once(
                step, spec, f"a previous attempt started {spec.argv[0]} and its outcome was not "
                "recorded; medkit does not run it twice")
            if code not in spec.ok_exit_codes:
                raise ApplicationError(
                    f"{spec.argv[0]} exited {code}: {output[-500:]}", type="CommandFailed"
                )
            return ActionResult(action_name=request.action_name, kind=spec.kind, ok=True,
                                detail=f"{spec.argv[0]} exited {code}",
                                data={"exit_code": code, "output": output})

        return await perform_once(self._deps.ledger, request, dry_run, perform)
