"""The command probe: run a check program (argv, never a shell); exit code 0 is healthy.

The program runs in its own process group so a timeout kills it and anything it started (never
a group that took the program's pid after it ended, see `ProgramGroup.ours`). A
program that cannot be started (missing, not executable, not a program the kernel can run, bad
cwd) is bad configuration: a non-retryable `ProbeConfigError`, and so is an `inherit_env` name
the worker does not set.

Like every child of the worker, the program gets a scrubbed environment (see
activities/child_env.py), and the output tail kept in the result's detail is redacted of secret
values: probe results are recorded in workflow history and shown by `medkit status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from datetime import UTC, datetime

from temporalio.exceptions import ApplicationError

from activities.child_env import child_environment, redact, unrunnable
from activities.command import ProgramGroup
from models.probes import CommandProbe, ProbeResult

DETAIL_TAIL = 500
"""How many characters of the program's output end up in the result's detail."""

KILL_GRACE = 2.0
"""How long to wait for the output pipes to close after the process group was killed."""


def _tail(output: bytes, spec: CommandProbe) -> str:
    """The end of the output, redacted before it is cut so no part of a secret survives the cut."""
    text = redact(output.decode(errors="replace"), spec.inherit_env).strip()
    return text[-DETAIL_TAIL:]


async def check_command(spec: CommandProbe) -> ProbeResult:
    """Run the program once within the probe's timeout and judge its exit code."""
    started = time.perf_counter()
    try:
        env = child_environment(spec.env, spec.inherit_env)
    except ApplicationError as err:
        raise ApplicationError(f"command probe {spec.name!r}: {err.message}",
                               type="ProbeConfigError", non_retryable=True) from err
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, cwd=spec.cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as err:
        if not unrunnable(err):
            raise
        raise ApplicationError(
            f"command probe {spec.name!r} cannot run {spec.argv[0]!r}: {err.strerror}",
            type="ProbeConfigError", non_retryable=True,
        ) from err
    communicate = asyncio.ensure_future(proc.communicate())
    with ProgramGroup(proc.pid) as group:
        try:
            done, _ = await asyncio.wait({communicate}, timeout=spec.timeout.total_seconds())
        finally:
            if not communicate.done():
                group.signal(signal.SIGKILL)
    at = datetime.now(UTC)
    if not done:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(communicate, KILL_GRACE)
        output = communicate.result()[0] if communicate.done() else b""
        tail = _tail(output, spec)
        return ProbeResult(
            probe=spec.name, kind=spec.kind, healthy=False, failure="slow", at=at,
            observed={"exit_code": None},
            detail=f"{spec.argv[0]} did not finish within {spec.timeout.total_seconds():g}s"
                   + (f": {tail}" if tail else ""),
        )
    latency_ms = (time.perf_counter() - started) * 1000
    code = proc.returncode if proc.returncode is not None else -1
    tail = _tail(communicate.result()[0], spec)
    detail = f"{spec.argv[0]} exited {code}" + (f": {tail}" if tail else "")
    observed: dict[str, float | int | str | None] = {"exit_code": code}
    if code != 0:
        return ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="check_failed",
                           latency_ms=latency_ms, observed=observed, detail=detail, at=at)
    return ProbeResult(probe=spec.name, kind=spec.kind, healthy=True, latency_ms=latency_ms,
                       observed=observed, detail=detail, at=at)
