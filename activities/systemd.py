"""Restart of a systemd unit: `systemctl [--user] restart UNIT` as an argv, exit codes mapped.

systemctl follows the LSB exit codes for actions: 0 success; 1 generic failure (the unit's
start job failed, worth a retry); 2 invalid arguments, 3 unimplemented, 4 insufficient
privilege, 5 unit not found (not installed), 6 not configured: retrying cannot help those.
"""

from __future__ import annotations

import os

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.command import run_at_most_once
from activities.deps import ActivityDeps
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from models.actions import ActionRequest, ActionResult, CommandAction, SystemdRestartAction

PERMANENT_EXIT: dict[int, tuple[str, str]] = {
    2: ("SystemdBadArguments", "invalid or excess arguments"),
    3: ("SystemdUnimplemented", "unimplemented feature"),
    4: ("SystemdPermissionDenied", "insufficient privilege"),
    5: ("UnitNotFound", "unit not found"),
    6: ("SystemdNotConfigured", "unit not configured"),
}
"""The LSB action exit codes for which a retry cannot help."""

USER_BUS = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")
"""What `systemctl --user` needs to find the user's manager (its D-Bus socket); not secrets."""


def systemctl_argv(spec: SystemdRestartAction) -> list[str]:
    """The argv medkit runs; `--` keeps a unit name from ever being read as an option."""
    return [spec.systemctl, *(["--user"] if spec.user else []), "restart", "--", spec.unit]


def bus_variables(spec: SystemdRestartAction) -> tuple[str, ...]:
    """The worker variables systemctl gets beyond the allowlist: the user bus, for `--user`.

    Like every child, systemctl otherwise gets a scrubbed environment (activities/child_env.py).
    """
    return tuple(name for name in USER_BUS if name in os.environ) if spec.user else ()


class SystemdActivities:
    """The systemd restart activity."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="restart_systemd")
    async def restart_systemd(self, request: ActionRequest) -> ActionResult:
        """Restart the unit once for this step; a crash mid-restart is not silently repeated."""
        spec = action_spec(request, SystemdRestartAction)
        argv = systemctl_argv(spec)

        def dry_run() -> DryRun:
            return DryRun(f"would run {argv}")

        async def perform(step: ActionStep) -> ActionResult:
            code, output = await run_at_most_once(
                step, CommandAction(argv=argv, timeout=spec.timeout),
                f"a previous attempt ran systemctl restart {spec.unit} and its outcome was not "
                "recorded; medkit does not restart it twice", inherit=bus_variables(spec))
            if code in PERMANENT_EXIT:
                kind, meaning = PERMANENT_EXIT[code]
                raise ApplicationError(f"systemctl restart {spec.unit} exited {code} ({meaning}): "
                                       f"{output[-300:].strip()}", type=kind, non_retryable=True)
            if code != 0:
                raise ApplicationError(f"systemctl restart {spec.unit} exited {code}: "
                                       f"{output[-300:].strip()}", type="SystemdRestartFailed")
            return ActionResult(action_name=request.action_name, kind=spec.kind, ok=True,
                                detail=f"systemctl restart {spec.unit} succeeded",
                                data={"exit_code": code, "unit": spec.unit})

        return await perform_once(self._deps.ledger, request, dry_run, perform)
