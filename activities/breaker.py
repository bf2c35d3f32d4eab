"""The circuit-breaker toggle, with staged recovery: half-open, N trial probes, then closed or re-opened."""

from __future__ import annotations

import asyncio
import json

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.http_action import auth_headers, raise_for_action_status, send
from activities.idempotency import ActionStep, DryRun, action_spec, perform_once
from activities.probes import check_http, check_tcp
from models.actions import ActionRequest, ActionResult, BreakerAction
from models.probes import HttpProbe, ProbeResult
from models.urls import redact_url

BREAKER_OK = [200, 201, 202, 204]


class BreakerActivities:
    """Moves a target's breaker through its admin endpoint: POST {"state": ...}.

    Setting a state is idempotent, so a retry simply sets it again; the ledger keeps a finished
    step from running its trials twice.
    """

    def __init__(self, deps: ActivityDeps) -> None:
        self._deps = deps

    async def _set(self, spec: BreakerAction, state: str, what: str) -> httpx.Response:
        response = await send(
            self._deps.http, "POST", spec.url, body={"state": state},
            timeout=spec.timeout.total_seconds(), what=what,
            headers=auth_headers(spec.bearer_token_env, f"{what} token"),
        )
        raise_for_action_status(response, BREAKER_OK, f"{what} (set {state})")
        return response

    async def _trial(self, spec: BreakerAction) -> ProbeResult:
        probe = spec.trial_probe
        assert probe is not None
        if isinstance(probe, HttpProbe):
            return await check_http(self._deps.http, probe)
        return await check_tcp(probe)

    async def _run_trials(self, spec: BreakerAction) -> list[ProbeResult]:
        """Run the trial probes; stop at the first failure (one is enough to re-open)."""
        results: list[ProbeResult] = []
        for n in range(1, spec.trials + 1):
            result = await self._trial(spec)
            results.append(result)
            activity.heartbeat({"trial": n, "healthy": result.healthy})
            if not result.healthy:
                break
            if n < spec.trials:
                await asyncio.sleep(spec.trial_interval.total_seconds())
        return results

    @activity.defn(name="set_breaker")
    async def set_breaker(self, request: ActionRequest) -> ActionResult:
        """Set the breaker; for a half-open with trials, close it if all pass, else re-open and fail."""
        spec = action_spec(request, BreakerAction)
        what = f"breaker of {request.service!r} at {redact_url(spec.url)}"

        def dry_run() -> DryRun:
            staged = (f", run {spec.trials} trial probe(s) {spec.trial_probe.name!r}, then close it "
                      f"if all pass or re-open it" if spec.trial_probe is not None else "")
            return DryRun(f"would set the {what} to {spec.state}{staged}")

        async def perform(step: ActionStep) -> ActionResult:
            try:
                await self._set(spec, spec.state, what)
            except ApplicationError as err:
                if err.type in ("Unreachable", "HttpActionUnknownOutcome") and spec.if_unreachable == "skip":
                    return ActionResult(action_name=request.action_name, kind=spec.kind, ok=True,
                                        detail=f"{what} unreachable; skipped (if_unreachable: skip)",
                                        data={"state": None})
                raise
            await step.record(state=spec.state)
            if not spec.trials:
                return ActionResult(action_name=request.action_name, kind=spec.kind, ok=True,
                                    detail=f"{what} set to {spec.state}", data={"state": spec.state})
            trials = await self._run_trials(spec)
            passed = sum(1 for t in trials if t.healthy)
            await step.record(trials=[t.evidence() for t in trials])
            if passed == spec.trials:
                await self._set(spec, "closed", what)
                return ActionResult(
                    action_name=request.action_name, kind=spec.kind, ok=True,
                    detail=f"{what}: {passed}/{spec.trials} half-open trials passed; closed",
                    data={"state": "closed", "trials_passed": passed, "trials": spec.trials},
                )
            await self._set(spec, "open", what)
            await step.record(state="open")
            raise ApplicationError(
                f"{what}: trial {len(trials)}/{spec.trials} failed ({trials[-1].detail}); re-opened",
                json.dumps({"trials_passed": passed}), type="BreakerTrialFailed", non_retryable=True,
            )

        return await perform_once(self._deps.ledger, request, dry_run, perform)
