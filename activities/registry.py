"""The full list of activities a medkit worker registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.breaker import BreakerActivities
from activities.breaker_entity import BreakerEntityActivities
from activities.command import CommandActivities
from activities.deps import ActivityDeps
from activities.docker import DockerActivities
from activities.http_action import HttpActionActivities
from activities.kubernetes import KubernetesActivities
from activities.notify import NotifyActivities
from activities.probes import ProbeActivities
from activities.process import ProcessActivities, ProcessSupervisor
from activities.process_pool import ProcessPool
from activities.record import RecordActivities
from activities.scale import ScaleActivities
from activities.systemd import SystemdActivities


def build_activities(deps: ActivityDeps, supervisor: ProcessSupervisor) -> list[Callable[..., Any]]:
    """Every activity, bound to the worker's shared resources."""
    probes = ProbeActivities(deps.http)
    process = ProcessActivities(deps, supervisor)
    command = CommandActivities(deps)
    notify = NotifyActivities(deps)
    systemd = SystemdActivities(deps)
    docker = DockerActivities(deps)
    kubernetes = KubernetesActivities(deps)
    http_action = HttpActionActivities(deps)
    breaker = BreakerActivities(deps)
    breaker_entity = BreakerEntityActivities(deps)
    scale = ScaleActivities(deps, ProcessPool(deps.state_dir, supervisor))
    record = RecordActivities(deps)
    return [
        probes.probe_service,
        process.restart_process,
        command.run_command,
        notify.notify,
        systemd.restart_systemd,
        docker.restart_docker,
        kubernetes.restart_kubernetes,
        http_action.http_action,
        breaker.set_breaker,
        breaker_entity.command_breaker_entity,
        scale.scale_process_pool,
        scale.scale_kubernetes,
        scale.scale_command,
        scale.scale_http,
        record.record_incident,
        record.count_recent_actions,
    ]
