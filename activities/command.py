"""The command action: run an argv (never a shell) with a timeout and check its exit code.

The program gets a scrubbed environment (`child_environment`) and its output is redacted of
secret values (`redact`) before it goes anywhere: the output is kept in the result and in error
messages, both of which end up in the workflow history. systemd and scale_command run their
programs through `run_argv` too.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.child_env import child_environment, redact
from activities.deps import ActivityDeps
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from models.actions import ActionRequest, ActionResult, CommandAction

OUTPUT_LIMIT = 4000
"""How much of a command's output is kept in the result and the history."""


async def run_argv(spec: CommandAction, inherit: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run the command, heartbeating while it runs; return its exit code and tail of its output.

    The output is redacted of secret values, those of the spec's `inherit_env` included.
    `inherit` adds worker variables the caller itself needs passed (systemctl's bus address).
    """
    env = child_environment(spec.env, [*spec.inherit_env, *inherit])
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, cwd=spec.cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as err:
        raise ApplicationError(
            f"cannot run {spec.argv[0]!r}: {err}", type="CommandNotFound", non_retryable=True
        ) from err
    communicate = asyncio.ensure_future(proc.communicate())
    deadline = asyncio.get_running_loop().time() + spec.timeout.total_seconds()
    while not communicate.done():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            proc.kill()
            await communicate
            raise ApplicationError(
                f"{spec.argv[0]} timed out after {spec.timeout.total_seconds():.0f}s",
                type="CommandTimeout",
            )
        await asyncio.wait({communicate}, timeout=min(remaining, 1.0))
        activity.heartbeat({"pid": proc.pid})
    stdout, _ = communicate.result()
    text = redact(stdout.decode(errors="replace"), spec.inherit_env)
    return proc.returncode if proc.returncode is not None else -1, text[-OUTPUT_LIMIT:]


async def run_at_most_once(step: ActionStep, spec: CommandAction, refusal: str,
                           inherit: tuple[str, ...] = ()) -> tuple[int, str]:
    """`run_argv` for an action step, never twice: the step records that the program is running,
    so an attempt after a crash mid-run (which cannot know whether the program did its work)
    fails with `refusal`, non-retryably, instead of running it again."""
    if step.progress.get("running"):
        raise ApplicationError(refusal, type="OutcomeUnknown", non_retryable=True)
    step.record(running=True)
    try:
        return await run_argv(spec, inherit)
    finally:
        step.record(running=False)


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
