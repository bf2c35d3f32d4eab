"""A stand-in worker process for the restart tests: runs restart_process once, with real deps.

`python -m tests.restart_worker '<json>'` with keys `state_dir` (its ledger, shared with the
test), `request` (an ActionRequest), `info` (workflow_id, workflow_run_id, activity_id: the
ledger key), and optionally `crash_at` ("new_pid": SIGKILL itself as the ledger is about to
record the started pid; "identity": as the identity record is about to be written) or `user`
(drop to that user first). Prints one JSON line: the result, or the error's type and retryability.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  (see below)
import dataclasses
import json
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.process
from activities.deps import ActivityDeps
from activities.process import ProcessActivities, ProcessSupervisor
from models.actions import ActionRequest


def die() -> None:
    """What a worker killed by the OOM killer or `kill -9` does: stop at once, mid-step."""
    os.kill(os.getpid(), signal.SIGKILL)


def drop_to(user: str) -> None:
    """Become `user` for good (real, effective and saved ids), as a worker run as that user is.

    Everything the run imports is imported before: this Python may live where `user` cannot
    read it (a pyenv under /root). That includes the thread pool behind asyncio.to_thread, which
    the ledger calls run in and asyncio imports only on first use."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def crash_at(deps: ActivityDeps, point: str | None) -> None:
    """Arrange for this process to die at `point` of the restart."""
    if point == "new_pid":
        record_progress = deps.ledger.progress

        def progress(key: str, **values: Any) -> None:
            if values.get("new_pid") is not None:
                die()
            record_progress(key, **values)

        deps.ledger.progress = progress  # type: ignore[method-assign]
    elif point == "identity":
        def record_identity(*_: object) -> None:
            die()

        activities.process.record_identity = record_identity  # type: ignore[attr-defined,assignment]


async def run(args: dict[str, Any]) -> dict[str, Any]:
    """Run the activity as the given step and say how it ended."""
    deps = ActivityDeps.create(Path(args["state_dir"]))
    crash_at(deps, args.get("crash_at"))
    acts = ProcessActivities(deps, ProcessSupervisor(deps.state_dir))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="restart_process", **args["info"])
    try:
        result = await env.run(acts.restart_process, ActionRequest.model_validate(args["request"]))
    except ApplicationError as err:
        return {"error": "ApplicationError", "type": err.type, "non_retryable": err.non_retryable,
                "message": str(err)}
    except Exception as err:  # the test asserts on what escaped, whatever it was
        return {"error": type(err).__name__, "message": str(err)}
    finally:
        await deps.http.aclose()
    return {"result": result.model_dump(mode="json")}


def main() -> None:
    """Entry point: parse the JSON argument, drop privileges if asked, run, print the outcome."""
    args = json.loads(sys.argv[1])
    if args.get("user"):
        drop_to(args["user"])
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
