"""Scale actions: set a replica count and record the count it replaced, so it can be restored.

Each finished scale step stores `target`, `previous_replicas` and `replicas` in its ledger
progress and in ActionResult.data. `replicas: previous` looks up the most recent finished
scale (that was not itself a restore) of the same target of the same service and scales
back to the count it replaced.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.command import run_argv
from activities.deps import ActivityDeps
from activities.http_action import auth_headers, raise_for_action_status, response_data, scrub, send
from activities.idempotency import ActionStep, DryRun, action_spec, off_loop, perform_once
from activities.kubernetes import MERGE_PATCH, KubeApi, load_credentials, workload_path
from activities.process_pool import ProcessPool
from models.actions import (
    ActionRequest,
    ActionResult,
    CommandAction,
    CommandScaleAction,
    HttpScaleAction,
    KubernetesScaleAction,
    ProcessPoolScaleAction,
    ReplicaTarget,
)
from models.urls import redact_url
from store.ledger import ActionLedger, ActionRecord, with_busy_timeout


def recorded_previous(ledger: ActionLedger, service: str, activity_name: str, target: str) -> int:
    """The count the last non-restore scale of this target replaced; a clear error if unknown."""
    with Session(with_busy_timeout(ledger.engine, ledger.wait_ms)) as session:
        records = session.exec(
            select(ActionRecord)
            .where(ActionRecord.service == service, ActionRecord.activity == activity_name,
                   col(ActionRecord.result_json).is_not(None))
            .order_by(col(ActionRecord.finished_at).desc())
        ).all()
    for record in records:
        progress = json.loads(record.progress_json)
        if progress.get("target") != target or progress.get("restore"):
            continue
        previous = progress.get("previous_replicas")
        if previous is None:
            break
        count = replica_count(previous)
        if count is None:  # recorded before counts were checked (replica_count)
            raise ApplicationError(
                f"replicas: previous, but the last scale of {target} for {service!r} recorded "
                f"{previous!r}, not a replica count", type="BadReplicaCount", non_retryable=True)
        return count
    raise ApplicationError(
        f"replicas: previous, but no earlier scale of {target} for {service!r} recorded the count "
        "it replaced", type="NoPreviousReplicas", non_retryable=True,
    )


def replica_count(value: object) -> int | None:
    """`value` as a replica count, or None when it is not one.

    A count read from a program's output or an endpoint's answer is recorded as the step's
    `previous_replicas`, which a later `replicas: previous` puts into an argv, a request body
    or a patch. So it must be what a policy's `replicas` may be, a whole number >= 0: not
    `-3` (an argument starting with `-` reads as an option), nor a JSON `true`.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def substitute(value: Any, replicas: int) -> Any:
    """`value` with every string "{replicas}" replaced by the number (and inside strings, its text)."""
    if value == "{replicas}":
        return replicas
    if isinstance(value, str):
        return value.replace("{replicas}", str(replicas))
    if isinstance(value, dict):
        return {k: substitute(v, replicas) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, replicas) for v in value]
    return value


def dig(document: Any, dotted: str) -> Any:
    """The value at a dotted path of a decoded JSON document, or None."""
    for part in dotted.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


class ScaleActivities:
    """The four scale activities, sharing the previous-count bookkeeping."""

    def __init__(self, deps: ActivityDeps, pool: ProcessPool) -> None:
        self._deps = deps
        self._pool = pool

    async def _desired(self, request: ActionRequest, replicas: ReplicaTarget, target: str) -> int:
        """The count to scale to: the policy's, or the one the last scale of the target replaced."""
        if replicas == "previous":
            return await off_loop(recorded_previous, self._deps.ledger, request.service,
                                  activity.info().activity_type, target)
        return replicas

    async def _scale(
        self, request: ActionRequest, replicas: ReplicaTarget, target: str,
        current: Callable[[], Awaitable[int | None]], apply: Callable[[int], Awaitable[str]],
    ) -> ActionResult:
        """Resolve the count, record what it replaces, apply it once per step, return both counts."""
        kind = request.spec.kind
        desired = await self._desired(request, replicas, target)
        restore = " (restoring the count before the last scale)" if replicas == "previous" else ""

        def dry_run() -> DryRun:
            return DryRun(f"would scale {target} to {desired}{restore}",
                          data={"replicas": desired, "target": target})

        async def perform(step: ActionStep) -> ActionResult:
            if "replicas" in step.progress:
                applied, previous = int(step.progress["replicas"]), step.progress.get("previous_replicas")
            else:
                applied, previous = desired, await current()
                await step.record(target=target, restore=replicas == "previous",
                            previous_replicas=previous, replicas=applied)
            how = await apply(applied)
            return ActionResult(
                action_name=request.action_name, kind=kind, ok=True,
                detail=f"scaled {target} from {previous if previous is not None else 'unknown'} to "
                       f"{applied}{restore}: {how}",
                data={"previous_replicas": previous, "replicas": applied, "target": target},
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)

    @activity.defn(name="scale_process_pool")
    async def scale_process_pool(self, request: ActionRequest) -> ActionResult:
        """Converge a local process pool on the replica count."""
        spec = action_spec(request, ProcessPoolScaleAction)
        target = f"pool {spec.pool or request.service}"

        async def current() -> int:
            return len(self._pool.running(request.service, spec))

        async def apply(replicas: int) -> str:
            return await self._pool.scale(request.service, spec, replicas)

        return await self._scale(request, spec.replicas, target, current, apply)

    @activity.defn(name="scale_kubernetes")
    async def scale_kubernetes(self, request: ActionRequest) -> ActionResult:
        """GET the scale subresource, then merge-patch spec.replicas."""
        spec = action_spec(request, KubernetesScaleAction)
        credentials = load_credentials(spec)
        namespace = spec.namespace or credentials.namespace
        path = workload_path(spec, namespace) + "/scale"
        target = f"{spec.workload} {namespace}/{spec.name}"
        timeout = spec.timeout.total_seconds()

        async def current() -> int:
            async with KubeApi(credentials, timeout) as api:
                scale = await api.request("GET", path, f"read scale of {target}")
            return int(dig(scale, "spec.replicas") or 0)

        async def apply(replicas: int) -> str:
            async with KubeApi(credentials, timeout) as api:
                scale = await api.request("PATCH", path, f"scale {target}",
                                          body={"spec": {"replicas": replicas}},
                                          content_type=MERGE_PATCH, params={"fieldManager": "medkit"})
            return f"spec.replicas now {dig(scale, 'spec.replicas')}"

        return await self._scale(request, spec.replicas, target, current, apply)

    @activity.defn(name="scale_command")
    async def scale_command(self, request: ActionRequest) -> ActionResult:
        """Run the scale command with `{replicas}` substituted (converging, so safe to repeat)."""
        spec = action_spec(request, CommandScaleAction)
        target = f"command {spec.argv[0]}"

        async def run(argv: list[str]) -> str:
            code, output = await run_argv(CommandAction(argv=argv, cwd=spec.cwd, env=spec.env,
                                                        inherit_env=spec.inherit_env,
                                                        timeout=spec.timeout))
            if code != 0:
                raise ApplicationError(f"{argv[0]} exited {code}: {output[-300:].strip()}",
                                       type="CommandFailed")
            return output

        async def current() -> int | None:
            if spec.current_argv is None:
                return None
            output = (await run(spec.current_argv)).strip()
            count = replica_count(output.split()[-1] if output else None)
            if count is None:
                raise ApplicationError(f"{spec.current_argv[0]} printed {output[-100:]!r}, "
                                       "not a replica count", type="BadReplicaCount",
                                       non_retryable=True)
            return count

        async def apply(replicas: int) -> str:
            await run([arg.replace("{replicas}", str(replicas)) for arg in spec.argv])
            return f"{spec.argv[0]} exited 0"

        return await self._scale(request, spec.replicas, target, current, apply)

    @activity.defn(name="scale_http")
    async def scale_http(self, request: ActionRequest) -> ActionResult:
        """Read the count from current_url (optional), then send the scale request."""
        spec = action_spec(request, HttpScaleAction)
        what = f"scale endpoint of {request.service!r}"
        timeout = spec.timeout.total_seconds()

        async def current() -> int | None:
            if spec.current_url is None:
                return None
            headers = auth_headers(spec.bearer_token_env, f"{what} token")
            response = await send(self._deps.http, "GET", spec.current_url, body=None,
                                  timeout=timeout, headers=headers, what=what)
            raise_for_action_status(response, [200], f"GET {redact_url(spec.current_url)}")
            value = dig(response.json(), spec.replicas_field)
            count = replica_count(value)
            if count is None:
                shown = scrub(repr(value), response)[:100]
                raise ApplicationError(f"GET {redact_url(spec.current_url)}: "
                                       f"{spec.replicas_field} is {shown}, not a replica count",
                                       type="BadReplicaCount", non_retryable=True)
            return count

        async def apply(replicas: int) -> str:
            headers = auth_headers(spec.bearer_token_env, f"{what} token")
            response = await send(self._deps.http, spec.method, spec.url,
                                  body=substitute(spec.body, replicas), timeout=timeout,
                                  headers=headers, what=what)
            raise_for_action_status(response, spec.expect_status,
                                    f"{spec.method} {redact_url(spec.url)}")
            return f"HTTP {response_data(response)['status']}"

        return await self._scale(request, spec.replicas, redact_url(spec.url), current, apply)
