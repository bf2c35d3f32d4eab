"""The worker's own policy file is the authority over what its activities run.

A workflow's input carries a policy snapshot, and anyone who can start workflows in the namespace
writes that input. So before an action, probe round or notification runs, the worker compares the
spec it was handed with the one its own policy file defines for that service (by digest) and
refuses, non-retryably, anything unknown to it or different from it.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from models.actions import ActionRequest
from models.base import MedkitModel
from models.fleet import LeaseRequest
from models.notifications import NotifyRequest
from models.policy import PolicyFile, ServicePolicy, spec_digest
from models.policy_safety import SAFETY_FIELDS, safety_digest
from models.probes import ProbeRoundRequest

POLICY_MISMATCH = "PolicyMismatch"
"""The ApplicationError type of a refusal, which the recovery hands to a human."""

_SHOWN = 12
"""Hex characters of a digest shown in a refusal: enough to tell two specs apart."""


class PolicyAuthority:
    """The worker's policy file, indexed by service, with the digest of every spec it defines."""

    def __init__(self, policy: PolicyFile) -> None:
        self._services: dict[str, ServicePolicy] = {s.name: s for s in policy.services}
        self._actions = {(s.name, name): spec_digest(spec)
                         for s in policy.services for name, spec in s.actions.items()}
        self._probes = {(s.name, probe.name): spec_digest(probe)
                        for s in policy.services for probe in s.probes}
        self._routes = {(s.name, name): spec_digest(route)
                        for s in policy.services for name, route in s.routes.items()}
        self._safety = {s.name: safety_digest(s) for s in policy.services}
        self._fleet = {s.name: spec_digest(s.fleet) for s in policy.services}

    def refusal(self, arg: object) -> str | None:
        """Why the worker must not run an activity with this argument, or None when it may."""
        if isinstance(arg, ActionRequest):
            return self._action_refusal(arg)
        if isinstance(arg, ProbeRoundRequest):
            for probe in arg.probes:
                reason = self._compare(self._probes, arg.service, "probe", probe.name, probe)
                if reason is not None:
                    return reason
            return None
        if isinstance(arg, NotifyRequest):
            return self._compare(self._routes, arg.notification.service, "route", arg.route_name,
                                 arg.route)
        if isinstance(arg, LeaseRequest):
            return self._lease_refusal(arg)
        return None  # store writes, budget counts: nothing to run

    def _lease_refusal(self, request: LeaseRequest) -> str | None:
        """The coordinator adopts the fleet limits a lease request carries, so they must be the
        worker's own: a forged or outdated snapshot must not lift the blast-radius cap."""
        if request.service not in self._services:
            return f"service {request.service!r} is unknown to the worker's policy file"
        if spec_digest(request.limits) != self._fleet[request.service]:
            return (f"the fleet limits in the lease request for {request.service!r} differ from "
                    "the worker's policy file")
        return None

    def _action_refusal(self, request: ActionRequest) -> str | None:
        reason = self._compare(self._actions, request.service, "action", request.action_name,
                               request.spec)
        if reason is not None:
            return reason
        if request.policy_digest != self._safety[request.service]:
            return (f"action {request.action_name!r} of service {request.service!r}: the recovery's "
                    f"policy snapshot differs from the worker's policy file in "
                    f"{', '.join(sorted(SAFETY_FIELDS))} (started before a policy change, or "
                    "forged); not acting on it")
        if self._services[request.service].dry_run and not request.dry_run:
            return (f"action {request.action_name!r} of service {request.service!r} was requested "
                    "for real, but the worker's policy file puts the service in dry-run")
        return None

    def _compare(self, known: dict[tuple[str, str], str], service: str, what: str, name: str,
                 spec: MedkitModel) -> str | None:
        if service not in self._services:
            return f"service {service!r} is unknown to the worker's policy file"
        own = known.get((service, name))
        if own is None:
            return f"{what} {name!r} of service {service!r} is unknown to the worker's policy file"
        given = spec_digest(spec)
        if given != own:
            return (f"{what} {name!r} of service {service!r} differs from the worker's policy file "
                    f"(requested spec digest {given[:_SHOWN]}, worker's {own[:_SHOWN]})")
        return None


class _Guard(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, authority: PolicyAuthority) -> None:
        super().__init__(next)
        self._authority = authority

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        for arg in input.args:
            reason = self._authority.refusal(arg)
            if reason is not None:
                info = activity.info()
                structlog.get_logger("medkit.policy").warning(
                    "activity refused: its spec is not the worker's", reason=reason,
                    activity=info.activity_type, workflow_id=info.workflow_id)
                raise ApplicationError(reason, type=POLICY_MISMATCH, non_retryable=True)
        return await super().execute_activity(input)


class PolicyGuardInterceptor(Interceptor):
    """Refuses any activity (regular or local) whose action, probe or route spec is not exactly
    the one the worker's own policy file defines, so a forged workflow input cannot run code."""

    def __init__(self, policy: PolicyFile) -> None:
        self._authority = PolicyAuthority(policy)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Check each activity's input before it runs."""
        return _Guard(next, self._authority)
