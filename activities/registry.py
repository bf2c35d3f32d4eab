"""The full list of activities a medkit worker registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.command import CommandActivities
from activities.deps import ActivityDeps
from activities.notify import NotifyActivities
from activities.probes import ProbeActivities
from activities.process import ProcessActivities, ProcessSupervisor
from activities.record import RecordActivities


def build_activities(deps: ActivityDeps, supervisor: ProcessSupervisor) -> list[Callable[..., Any]]:
    """Every activity, bound to the worker's shared resources."""
    probes = ProbeActivities(deps.http)
    process = ProcessActivities(deps, supervisor)
    command = CommandActivities(deps)
    notify = NotifyActivities(deps)
    record = RecordActivities(deps)
    return [
        probes.probe_http,
        probes.probe_tcp,
        probes.probe_process,
        probes.probe_prometheus,
        probes.probe_host,
        probes.probe_command,
        process.restart_process,
        command.run_command,
        notify.notify,
        record.record_incident,
        record.count_recent_actions,
    ]
