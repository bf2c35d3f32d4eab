"""The host probe: this machine's CPU, memory, disk and load, each against an optional maximum.

Every measured value is recorded in `observed` so assessment rules can use it; CPU is only
measured when it has a limit, because measuring it means sampling for `cpu_sample`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import psutil
from temporalio.exceptions import ApplicationError

from models.probes import HostProbe, ProbeResult


def check_host(spec: HostProbe) -> ProbeResult:
    """Measure the host and compare with the limits that are set (blocking: run in a thread)."""
    try:
        disk = psutil.disk_usage(spec.disk_path).percent
    except OSError as err:
        raise ApplicationError(
            f"host probe {spec.name!r}: cannot read disk usage of {spec.disk_path!r}: {err.strerror}",
            type="ProbeConfigError", non_retryable=True,
        ) from err
    cores = psutil.cpu_count() or 1
    load = os.getloadavg()[0]
    if spec.load_per_core:
        load /= cores
    observed: dict[str, float | int | str | None] = {
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": disk,
        "load": round(load, 3),
        "cores": cores,
        "cpu_percent": (psutil.cpu_percent(interval=spec.cpu_sample.total_seconds())
                        if spec.max_cpu_percent is not None else None),
    }
    load_label = "load per core" if spec.load_per_core else "load 1m"
    limits = [
        ("CPU", "cpu_percent", spec.max_cpu_percent, "%"),
        ("memory", "memory_percent", spec.max_memory_percent, "%"),
        (f"disk {spec.disk_path}", "disk_percent", spec.max_disk_percent, "%"),
        (load_label, "load", spec.max_load, ""),
    ]
    over: list[str] = []
    within: list[str] = []
    for label, key, limit, unit in limits:
        value = observed[key]
        if limit is None or not isinstance(value, float | int):
            continue
        text = f"{label} {value:g}{unit}"
        if value > limit:
            over.append(f"{text} > {limit:g}{unit}")
        else:
            within.append(f"{text} <= {limit:g}{unit}")
    at = datetime.now(UTC)
    if over:
        return ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="resource_limit",
                           observed=observed, detail="; ".join(over), at=at)
    return ProbeResult(probe=spec.name, kind=spec.kind, healthy=True, observed=observed,
                       detail="; ".join(within), at=at)
