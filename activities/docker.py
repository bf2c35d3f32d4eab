"""Restart of a Docker container through the Engine API on its unix socket.

Inspect first (GET /containers/{id}/json: proves the container exists and records
State.StartedAt), then POST /containers/{id}/restart?t=N (204 no error, 404 no such
container, 500 server error). A retry that finds StartedAt changed knows the restart
already happened and does not restart again.
"""

from __future__ import annotations

from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.heartbeat import heartbeating
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from models.actions import ActionRequest, ActionResult, DockerRestartAction


def engine_client(spec: DockerRestartAction) -> httpx.AsyncClient:
    """An HTTP client speaking to the engine over its unix socket (the host name is ignored)."""
    prefix = f"/{spec.api_version}" if spec.api_version else ""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=spec.socket),
                             base_url=f"http://docker{prefix}")


def engine_error(response: httpx.Response, what: str) -> ApplicationError:
    """404 and other 4xx are permanent; 5xx is worth a retry. The engine's message is kept."""
    try:
        message = str(response.json().get("message", ""))
    except ValueError:
        message = response.text[:300]
    text = f"{what}: HTTP {response.status_code} {message}"
    if response.status_code == 404:
        return ApplicationError(text, type="ContainerNotFound", non_retryable=True)
    if response.status_code >= 500 or response.status_code == 429:
        return ApplicationError(text, type="DockerEngineError")
    return ApplicationError(text, type="DockerRequestRejected", non_retryable=True)


async def call(client: httpx.AsyncClient, method: str, path: str, timeout: float,
               params: dict[str, Any] | None = None) -> httpx.Response:
    """One engine request; an unreachable socket is retryable (the daemon may be restarting)."""
    try:
        return await heartbeating(client.request(method, path, params=params, timeout=timeout),
                                  f"docker {method} {path}")
    except httpx.HTTPError as err:
        raise ApplicationError(f"docker engine {method} {path} failed: {type(err).__name__}",
                               type="DockerUnreachable") from err


async def started_at(client: httpx.AsyncClient, spec: DockerRestartAction) -> str:
    """The container's State.StartedAt, which changes on every (re)start."""
    response = await call(client, "GET", f"/containers/{spec.container}/json",
                          spec.timeout.total_seconds())
    if response.status_code != 200:
        raise engine_error(response, f"inspect {spec.container}")
    return str(response.json().get("State", {}).get("StartedAt", ""))


class DockerActivities:
    """The Docker container restart activity."""

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    @activity.defn(name="restart_docker")
    async def restart_docker(self, request: ActionRequest) -> ActionResult:
        """Restart the container once for this step."""
        spec = action_spec(request, DockerRestartAction)
        stop = int(spec.stop_timeout.total_seconds())

        def dry_run() -> DryRun:
            return DryRun(f"would POST /containers/{spec.container}/restart?t={stop} on {spec.socket}")

        async def perform(step: ActionStep) -> ActionResult:
            before: str | None = step.progress.get("started_at_before")
            async with engine_client(spec) as client:
                now = await started_at(client, spec)
                if before is not None and now != before:
                    how = "restart by an earlier attempt confirmed"
                else:
                    before = now
                    await step.record(started_at_before=before)
                    response = await call(client, "POST", f"/containers/{spec.container}/restart",
                                          spec.timeout.total_seconds(), params={"t": stop})
                    if response.status_code != 204:
                        raise engine_error(response, f"restart {spec.container}")
                    how = "restarted"
                    now = await started_at(client, spec)
            return ActionResult(
                action_name=request.action_name, kind=spec.kind, ok=True,
                detail=f"container {spec.container} {how}; started at {now}",
                data={"container": spec.container, "started_at_before": before, "started_at": now},
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)
