"""Probe activities: HTTP, TCP, process, Prometheus, host and command checks.

An unhealthy target is a result, not an error; only bad configuration raises (non-retryable).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.probe_command import check_command
from activities.probe_host import check_host
from activities.probe_prometheus import check_prometheus
from activities.url_errors import url_error
from models.probes import (
    CommandProbe,
    HostProbe,
    HttpProbe,
    ProbeResult,
    ProbeRound,
    ProbeRoundRequest,
    ProbeSpec,
    ProcessProbe,
    PrometheusProbe,
    TcpProbe,
)
from models.urls import redact_url, url_error_reason


def _result(spec: HttpProbe | TcpProbe | ProcessProbe, **fields: object) -> ProbeResult:
    return ProbeResult.model_validate(
        {"probe": spec.name, "kind": spec.kind, "at": datetime.now(UTC), **fields}
    )


def read_pid(pid_file: str) -> int | None:
    """The pid recorded in a pid file, or None when the file is missing or unreadable."""
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int | None) -> bool:
    """True when the pid names a running process (zombies count as dead)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def check_http(http: httpx.AsyncClient, spec: HttpProbe) -> ProbeResult:
    """One HTTP request judged by status, latency and body."""
    shown = redact_url(spec.url)  # the detail goes into history: never the URL's credentials
    started = time.perf_counter()
    try:
        response = await http.request(spec.method, spec.url, timeout=spec.timeout.total_seconds())
    except httpx.TimeoutException:
        return _result(spec, healthy=False, failure="slow",
                       detail=f"no response from {shown} within {spec.timeout.total_seconds()}s")
    except httpx.HTTPError as err:
        return _result(spec, healthy=False, failure="unreachable",
                       detail=f"{shown} unreachable: {type(err).__name__}")
    except Exception as err:  # a URL policy validation let through: a failing probe, not a crash
        cause = url_error(err)
        if cause is None:
            raise
        return _result(spec, healthy=False, failure="error",
                       detail=f"cannot request {shown}: {url_error_reason(cause)}")
    latency_ms = (time.perf_counter() - started) * 1000
    observed: dict[str, float | int | str | None] = {"status": response.status_code}
    if response.status_code not in spec.expect_status:
        return _result(spec, healthy=False, failure="bad_status", latency_ms=latency_ms,
                       observed=observed,
                       detail=f"HTTP {response.status_code}, expected {spec.expect_status}")
    if spec.max_latency_ms is not None and latency_ms > spec.max_latency_ms:
        return _result(spec, healthy=False, failure="slow", latency_ms=latency_ms,
                       observed=observed,
                       detail=f"{latency_ms:.0f} ms exceeds {spec.max_latency_ms:.0f} ms")
    if spec.body_contains is not None and spec.body_contains not in response.text:
        return _result(spec, healthy=False, failure="body_mismatch", latency_ms=latency_ms,
                       observed=observed, detail=f"body lacks {spec.body_contains!r}")
    return _result(spec, healthy=True, latency_ms=latency_ms, observed=observed,
                   detail=f"HTTP {response.status_code}")


async def check_tcp(spec: TcpProbe) -> ProbeResult:
    """One TCP connect within the timeout."""
    started = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(spec.host, spec.port), spec.timeout.total_seconds()
        )
    except TimeoutError:
        return _result(spec, healthy=False, failure="slow",
                       detail=f"{spec.host}:{spec.port} did not accept within the timeout")
    except OSError as err:
        return _result(spec, healthy=False, failure="unreachable",
                       detail=f"{spec.host}:{spec.port} refused: {err.strerror or err}")
    writer.close()
    await writer.wait_closed()
    latency_ms = (time.perf_counter() - started) * 1000
    return _result(spec, healthy=True, latency_ms=latency_ms,
                   detail=f"{spec.host}:{spec.port} accepted")


def _find_process(spec: ProcessProbe) -> psutil.Process | None:
    if spec.pid_file is not None:
        pid = read_pid(spec.pid_file)
        return psutil.Process(pid) if process_alive(pid) and pid is not None else None
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["name"] == spec.process_name and proc.info["status"] != psutil.STATUS_ZOMBIE:
            return proc
    return None


def check_process(spec: ProcessProbe) -> ProbeResult:
    """Whether the process is alive and within its CPU and memory limits."""
    locator = spec.pid_file or spec.process_name
    try:
        proc = _find_process(spec)
        if proc is None:
            return _result(spec, healthy=False, failure="process_down",
                           detail=f"no running process for {locator}")
        rss_mb = proc.memory_info().rss / 1_048_576
        cpu = proc.cpu_percent(interval=0.2) if spec.max_cpu_percent is not None else None
    except psutil.NoSuchProcess:
        return _result(spec, healthy=False, failure="process_down",
                       detail=f"process for {locator} exited while probed")
    observed: dict[str, float | int | str | None] = {"pid": proc.pid, "rss_mb": round(rss_mb, 1),
                                                     "cpu_percent": cpu}
    if spec.max_rss_mb is not None and rss_mb > spec.max_rss_mb:
        return _result(spec, healthy=False, failure="resource_limit", observed=observed,
                       detail=f"pid {proc.pid} RSS {rss_mb:.0f} MB > {spec.max_rss_mb:.0f} MB")
    if spec.max_cpu_percent is not None and cpu is not None and cpu > spec.max_cpu_percent:
        return _result(spec, healthy=False, failure="resource_limit", observed=observed,
                       detail=f"pid {proc.pid} CPU {cpu:.0f}% > {spec.max_cpu_percent:.0f}%")
    return _result(spec, healthy=True, observed=observed, detail=f"pid {proc.pid} running")


class ProbeActivities:
    """The probe activity, sharing the worker's HTTP client."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @activity.defn(name="probe_service")
    async def probe_service(self, request: ProbeRoundRequest) -> ProbeRound:
        """Run every probe of the service concurrently: one activity (and one workflow task) per
        round. A probe that errors, or overruns its timeout, counts as unhealthy with the reason."""
        started = time.monotonic()
        results = list(await asyncio.gather(
            *(bounded_probe(self._http, spec) for spec in request.probes)))
        return ProbeRound(results=results, seconds=time.monotonic() - started)


async def run_probe(http: httpx.AsyncClient, spec: ProbeSpec) -> ProbeResult:
    """Run one probe of any kind (the detectors call this; recoveries through probe_service)."""
    if isinstance(spec, HttpProbe):
        return await check_http(http, spec)
    if isinstance(spec, TcpProbe):
        return await check_tcp(spec)
    if isinstance(spec, PrometheusProbe):
        return await check_prometheus(http, spec)
    if isinstance(spec, HostProbe):
        return await asyncio.to_thread(check_host, spec)
    if isinstance(spec, CommandProbe):
        return await check_command(spec)
    return await asyncio.to_thread(check_process, spec)


PROBE_GRACE = 1.0
"""Seconds a probe may run past its own timeout before it is cut off and counted as failing."""


async def bounded_probe(http: httpx.AsyncClient, spec: ProbeSpec) -> ProbeResult:
    """Run one probe, turning an overrun of its timeout or a probe error into an unhealthy result.

    A misconfigured probe (ApplicationError, e.g. a bad PromQL query, or a URL httpx cannot
    request) must not stop a poller or a probe round: it counts as failing, with the reason.
    """
    limit = spec.timeout.total_seconds() + PROBE_GRACE
    try:
        return await asyncio.wait_for(run_probe(http, spec), limit)
    except TimeoutError:
        return ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="slow",
                           detail=f"probe did not finish within {limit:.1f}s", at=datetime.now(UTC))
    except ApplicationError as err:
        return ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="error",
                           detail=f"probe failed: {err.message}", at=datetime.now(UTC))
    except Exception as err:
        cause = url_error(err)
        if cause is None:
            raise
        url = getattr(spec, "url", None)  # an http or prometheus probe's; the detail shows it redacted
        shown = f" {redact_url(url)}" if isinstance(url, str) else " its URL"
        return ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="error",
                           detail=f"probe failed: cannot request{shown}: {url_error_reason(cause)}",
                           at=datetime.now(UTC))
