"""Remediation actions (what medkit may do to a system) and their results."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from models.base import Duration, MedkitModel, Name
from models.probes import HttpProbe, TcpProbe

Argv = Annotated[list[str], Field(min_length=1)]
"""A program and its arguments. medkit never runs a shell."""


class RestartProcessAction(MedkitModel):
    """Stop a supervised local process (TERM, then KILL after `grace`) and start `argv` again."""

    activity: ClassVar[str] = "restart_process"
    kind: Literal["restart_process"] = "restart_process"
    argv: Argv
    pid_file: str
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    log_file: str | None = None
    grace: Duration = timedelta(seconds=5)
    ready_probe: Annotated[HttpProbe | TcpProbe, Field(discriminator="kind")] | None = None
    ready_timeout: Duration = timedelta(seconds=20)

    def time_budget(self) -> timedelta:
        """The longest one attempt can legitimately take: stop grace plus start-up."""
        return self.grace + self.ready_timeout


class CommandAction(MedkitModel):
    """Run a program (argv, no shell) with a timeout; any exit code outside `ok_exit_codes` fails."""

    activity: ClassVar[str] = "run_command"
    kind: Literal["command"] = "command"
    argv: Argv
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=30)
    ok_exit_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)

    def time_budget(self) -> timedelta:
        """The longest one attempt can legitimately take."""
        return self.timeout


class NotifyAction(MedkitModel):
    """Send a notification to the named routes as a ladder step (one notify activity per route)."""

    activity: ClassVar[str] = "notify"
    kind: Literal["notify"] = "notify"
    routes: list[Name] = Field(min_length=1)
    message: str = ""

    def time_budget(self) -> timedelta:
        """Delivery to one route."""
        return timedelta(seconds=30)


ActionSpec = Annotated[
    RestartProcessAction | CommandAction | NotifyAction, Field(discriminator="kind")
]
"""Any action a policy can define, selected by its `kind`."""


class ActionRequest(MedkitModel):
    """The single argument of every action activity."""

    workflow_id: str
    service: Name
    action_name: Name
    spec: ActionSpec
    reason: str
    dry_run: bool = False


class ActionResult(MedkitModel):
    """What an action did. `simulated` marks a dry-run; `replayed` an idempotent repeat."""

    action_name: str
    kind: str
    ok: bool
    detail: str
    simulated: bool = False
    replayed: bool = False
    data: dict[str, float | int | str | None] = Field(default_factory=dict)
