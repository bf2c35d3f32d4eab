"""RecoveryWorkflow: one durable incident recovery, from detection to a terminal outcome.

Detected → Assessing → (AutoRemediation | GradualRecovery | EmergencyRecovery) → Validating
→ Recovered, or → RetryRecovery → GradualRecovery with the next rung, or after the last
attempt → ManualIntervention → Resolved | retry | Aborted. Any action step may need an
operator's approval (AwaitingApproval). A service found healthy again before medkit acted ends
as Dismissed. Every transition is recorded in the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from models import search_attributes as sa
    from models.actions import (
        OUTCOME_UNKNOWN,
        ActionRequest,
        ActionResult,
        ActionSpec,
        BreakerAction,
        HttpAction,
    )
    from models.decisions import DecisionVerdict, OperatorDecision
    from models.detection import (
        MAX_REMEMBERED_REPORTS,
        REPORTS_MEMO,
        Detection,
        RecoveryInput,
        ReportBatch,
    )
    from models.fleet import LeaseDecision, LeaseRelease, LeaseRequest
    from models.incident_record import BudgetQuery, IncidentRecord, IncidentRecorded
    from models.notifications import Notification, NotificationEvent, NotifyRequest, NotifyResult
    from models.phases import PHASE_FOR_SEVERITY, DecisionKind, Outcome, Phase, Severity
    from models.policy import RungSpec, StepSpec
    from models.policy_safety import safety_digest
    from models.probes import ProbeResult, ProbeRound, ProbeRoundRequest
    from models.status import PendingDecision, RecoveryStatus, TimelineEntry, TimelineKind
    from workflows.assessment import assess

T = TypeVar("T")

PROBE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=2),
    maximum_attempts=2,
)
"""Probes retry once: a probe that errors twice counts as unhealthy rather than stalling."""

ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10), maximum_attempts=3,
    non_retryable_error_types=["WrongActionKind", "CommandNotFound", OUTCOME_UNKNOWN],
)
"""Actions retry briefly; the ladder, not the activity, is where a different approach is tried."""

NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30), maximum_attempts=6,
    non_retryable_error_types=["DeliveryRejected", "MissingSecret"],
)
"""Notifications retry for about a minute and a half; a lost page is recorded, never fatal."""

LEASE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5),
)
"""Asking the coordinator for a lease retries until it gets through: acting without one is unsafe."""

RELEASE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=2),
    maximum_attempts=5,
)
"""Handing a lease back retries briefly: if it still fails, the coordinator's check of its
holders reclaims the lease once the recovery has ended, so it is never lost."""

LEASE_ANSWER_WAIT = timedelta(seconds=30)
"""How long handing a lease back waits for the answer to a request still on its way (one
attempt's timeout): released first, the request would be granted after its release. A
coordinator slower than this is left to its check of the holders."""

STORE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=2), maximum_attempts=3)
"""The incident store is memory, not control: a write that keeps failing is skipped, not fatal."""

ACTION_HEARTBEAT = timedelta(seconds=30)
"""A worker that died mid-action is noticed within 30 s (heartbeats are sent about every second,
see workers.worker, so an abort still reaches a running action within a second or two)."""
MAX_REPORTS_IN_TIMELINE = 100
"""Duplicate reports are always counted; only the first hundred are listed in the timeline."""
PROBE_FRESHNESS = timedelta(seconds=2)
"""How long a probe round is trusted before acting: any wait longer than this (an emergency page
that retried, a slow lease answer, a notify step) makes medkit probe again first, so it never acts
on a service that became healthy meanwhile."""
FRESH_PROBES_PATCH = "probe-again-when-stale-by-time"
"""Marks runs that re-probe by age and before a rung's first real action even after a notify
step; runs recorded before it replay with the older rule (only named waits made probes stale)."""
LATE_REPORT_PATCH = "late-report-continues-as-new"
"""Marks runs in which a new report that arrives while the recovery is ending starts the next
recovery (continue-as-new) instead of being recorded as ignored and lost."""
HOLD_DECISIONS_PATCH = "no-decisions-while-revalidating"
"""Marks runs in which ManualIntervention's decisions are not taken while a resolved report is
validated (they were accepted, then dropped when validation passed)."""
ABORT_VERDICT_PATCH = "abort-verdict-at-the-end"
"""Marks runs whose abort update answers once the recovery has ended (Aborted, or the end it
reached first), not at the next transition: an abort takes effect at the next step that watches
for it, and the recovery may pass through other phases on its way there (runs before the patch
answered with one of those)."""
RELEASE_AFTER_ANSWER_PATCH = "release-after-lease-answer"
"""Marks runs that, giving up a lease request still unanswered (an abort, a dismissal, a
handover), let it reach the coordinator and hand the lease back after its answer; runs before
it cancelled the request and released at once, and a request that still arrived was granted
after its release, to a recovery that had ended. Decided when the request is made, so that
whether the run takes it never depends on how far the request had got."""
OUTCOME_UNKNOWN_PATCH = "outcome-unknown-hands-over"
"""Marks runs in which an action refused with OutcomeUnknown (a retry after a crash found it may
have run, its outcome never recorded) hands over to a human at once; runs before it took it for
a failed action and went on up the ladder, and a rung repeated ran the program a second time
(a new step, so a new ledger key) while the first might still be running."""
REMEMBER_REPORTS_PATCH = "report-ids-in-memo"
"""Marks runs that, as they end, keep the ids of the reports they counted in their memo
(REPORTS_MEMO), so that a repeat of one of them arriving later starts no second recovery; runs
before it ended without, and a repeat started a new recovery."""
WITHDRAWN_REPORT_PATCH = "withdrawn-report-probes-again"
"""Marks runs in which a service that no probe saw failing is probed again before it is acted on
once its source has reported the problem resolved, and is not acted on when every probe passes:
the report was the only evidence, and it was withdrawn. Runs before it acted on the report's
word anyway (an approved failover ran on a service its probes and its detector called healthy)."""
VALIDATION_TIMER = "validation interval"
"""The summary of the timer between validation rounds (the wait until the next round is due),
as the Temporal UI shows it."""


_END_EVENT: dict[Phase, NotificationEvent] = {
    Phase.RECOVERED: "recovered", Phase.RESOLVED: "resolved", Phase.ABORTED: "aborted",
    Phase.DISMISSED: "dismissed",
}

POLICY_MISMATCH = "PolicyMismatch"
"""The error type a worker raises for an activity whose spec its own policy file does not hold."""


class _Aborted(Exception):
    """An operator aborted the recovery; unwinds to the terminal Aborted transition."""


class _NeedsHuman(Exception):
    """Automation cannot go on (an approval went unanswered); hand over to ManualIntervention."""


class _AlreadyHealthy(Exception):
    """The probes pass again before medkit acted: end as Dismissed without acting."""


@workflow.defn
class RecoveryWorkflow:
    """Recovers one incident of one service, according to the policy snapshot in its input."""

    @workflow.init
    def __init__(self, recovery: RecoveryInput) -> None:
        self._input = recovery
        self._policy = recovery.policy
        self._policy_digest = safety_digest(recovery.policy)
        self._dry_run = recovery.dry_run or recovery.policy.dry_run
        self._phase = Phase.DETECTED
        self._severity: Severity | None = recovery.detection.severity
        self._category: str | None = None
        self._evidence: list[str] = []
        self._current_step: str | None = None
        self._attempts = 0
        self._operator_retries = 0
        self._escalations = 0
        self._reports = 1
        # in arrival order: those of the run this one continued from, then its own
        self._report_ids = dict.fromkeys([*recovery.counted_report_ids,
                                          recovery.detection.detection_id])
        self._probes_saw_problem = False
        self._last_round_healthy = False
        self._stale = False
        self._probed_at: datetime | None = None
        self._acted = False
        self._paged = False
        self._paged_routes: dict[str, str] = {}
        self._notifications = 0
        self._why: str | None = None
        self._handover: str | None = None
        self._at_deadline = "escalate"
        self._source_resolved = False
        self._report_withdrawn = False
        self._pending: PendingDecision | None = None
        self._decision: tuple[DecisionKind, OperatorDecision] | None = None
        self._abort: OperatorDecision | None = None
        self._outcome: Outcome | None = None
        self._started_at = workflow.now()
        self._timeline: list[TimelineEntry] = []
        self._lease: LeaseRequest | None = None
        self._lease_granted = False
        self._lease_answer: asyncio.Task[LeaseDecision] | None = None
        self._release_after_answer = False
        self._lease_decisions: dict[str, LeaseDecision] = {}
        self._stored = 0
        self._stored_phase: Phase | None = None
        self._stored_reports = 0
        self._closing = False
        self._local_activities = 0
        self._releasing: asyncio.Task[None] | None = None
        self._late_report: Detection | None = None
        # The first report goes first in the timeline, before reports that joined with the start.
        detection = recovery.detection
        dry = " [dry-run: actions are simulated]" if self._dry_run else ""
        # Stamped when the detector saw the problem (never later than now), so the store's
        # time-to-detect runs from the detection, not from the workflow's start.
        self._record(self._phase, f"{detection.source} reported: {detection.summary or 'problem'}{dry}",
                     actor=detection.source, kind="report",
                     at=_reported_at(detection.detected_at, self._started_at))

    @workflow.run
    async def run(self, recovery: RecoveryInput) -> RecoveryStatus:
        """Drive the state machine to a terminal phase and return the final status."""
        recorder = asyncio.ensure_future(self._record_incident())
        try:
            self._transition(Phase.ASSESSING, "assessing with the service's probes",
                             also=[sa.SERVICE.value_set(self._policy.name)])
            self._ask_for_lease()
            await self._recover()
        except _Aborted:
            assert self._abort is not None
            reason = self._abort.reason or "no reason given"
            await self._finish(Phase.ABORTED, f"aborted: {reason}", actor=self._abort.operator)
        except _AlreadyHealthy as healthy:
            await self._finish(Phase.DISMISSED, str(healthy))
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._closing = True
        await recorder
        if self._releasing is not None:
            await self._releasing
        if self._late_report is not None:
            # The service failed again while this recovery was closing: the signal-with-start
            # that carried the report joined this run, so the next recovery starts from here.
            workflow.continue_as_new(
                RecoveryInput(detection=self._late_report, policy=self._policy,
                              dry_run=self._input.dry_run,
                              counted_report_ids=self._remembered_reports()),
                search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(sa.SERVICE, self._policy.name)]),
            )
        return self.status()

    # ----- state machine -------------------------------------------------------------------

    async def _assess(self) -> None:
        results = (await self._probe_all("assess")).results
        detection = self._input.detection
        verdict = assess(results, self._policy.assessment, self._policy.probes, detection.severity,
                         detection.labels.get("category"))
        self._severity, self._category = verdict.severity, verdict.category
        self._evidence = [r.evidence() for r in results]
        if detection.summary:
            self._evidence.insert(0, f"{detection.source}: {detection.summary}")
        workflow.upsert_search_attributes([sa.SEVERITY.value_set(self._severity.value)])
        failed = sum(1 for r in results if not r.healthy)
        self._probes_saw_problem = failed > 0
        self._why = f"{failed} of {len(results)} probes failing; {verdict.reason}"
        self._record(self._phase, f"severity {self._severity.value}, category {self._category}: "
                     f"{self._why}", kind="probe")
        self._set_details()
        if not failed and self._policy.assessment.dismiss_when_healthy:
            raise _AlreadyHealthy(f"no probe confirms the report: all {len(results)} pass "
                                  "(assessment.dismiss_when_healthy); nothing done")

    async def _recover(self) -> None:
        """Assess, climb the ladder, and hand over to a human whenever automation cannot go on;
        an operator's retry climbs the ladder again from its first rung."""
        assessed = False
        while True:
            try:
                if not assessed:
                    await self._assess()
                    assessed = True
                assert self._severity is not None
                if await self._climb_ladder(self._severity):
                    await self._finish(Phase.RECOVERED, "validation passed")
                    return
                reason = f"all {self._policy.retry.max_attempts} attempts failed validation"
            except _NeedsHuman as human:
                reason = str(human)
            decided = await self._manual_intervention(reason)
            if decided is None:
                await self._finish(Phase.RECOVERED, "source reported resolved and validation passed")
                return
            kind, decision = decided
            if kind == DecisionKind.RESOLVE:
                await self._finish(Phase.RESOLVED, f"resolved by operator: "
                                   f"{decision.reason or 'no reason given'}", actor=decision.operator)
                return

    async def _climb_ladder(self, severity: Severity) -> bool:
        """Run rungs until one validates (True) or the attempts run out (False)."""
        ladder = self._policy.ladders.for_severity(severity)
        retry = self._policy.retry
        phase = PHASE_FOR_SEVERITY[severity]
        await self._acquire_lease()
        if severity == Severity.CRITICAL:
            await self._notify("emergency", f"{self._policy.name}: critical incident",
                               "Emergency recovery started; on-call notified at once.")
        for attempt in range(1, retry.max_attempts + 1):
            rung = ladder[min(attempt - 1, len(ladder) - 1)]
            self._attempts = attempt
            self._transition(phase, f"attempt {attempt}/{retry.max_attempts}: rung {rung.name!r} "
                             f"of the {severity.value} ladder")
            await self._run_rung(rung, phase)
            self._current_step = None
            self._transition(Phase.VALIDATING, f"validating rung {rung.name!r}")
            healthy, why = await self._validate()
            if healthy:
                self._record(self._phase, why, kind="probe")
                return True
            if attempt == retry.max_attempts:
                self._record(self._phase, why, kind="probe")
                return False
            backoff = retry.backoff(attempt)
            next_rung = ladder[min(attempt, len(ladder) - 1)]
            self._transition(Phase.RETRY_RECOVERY, f"{why}; trying rung {next_rung.name!r} "
                             f"after {backoff.total_seconds():g}s backoff")
            await self._guarded(workflow.sleep(backoff, summary=f"backoff before attempt {attempt + 1}"))
            self._stale = True
            phase = Phase.GRADUAL_RECOVERY
        return False

    async def _run_rung(self, rung: RungSpec, phase: Phase) -> None:
        """Run the rung's steps in order; a failed step ends the rung and validation decides.

        Before the rung's first action on the service (a notify step is not one), and after an
        approval, the service is probed again if the last probe round is stale (a wait, or more
        than PROBE_FRESHNESS ago): a service that is healthy by then is not acted on (see
        _still_needed)."""
        acted = False
        for index, step in enumerate(rung.steps, start=1):
            self._current_step = f"{rung.name} step {index}/{len(rung.steps)}: {step.label()}"
            self._set_details()
            if step.requires_approval:
                await self._await_approval(step, phase)
            if step.action is not None:
                if (not acted or step.requires_approval) and not await self._still_needed(step.label()):
                    return
                # A notify step does not touch the service: the first real action after it is
                # still the rung's first, and is checked again (runs before the patch: it was not).
                notifies = self._policy.actions[step.action].kind == "notify"
                acted = acted or not notifies or not workflow.patched(FRESH_PROBES_PATCH)
                ok = await self._act(step.action)
            elif step.check:
                results = (await self._probe_all(f"check after {rung.name} step {index}")).results
                failing = [r.evidence() for r in results if not r.healthy]
                ok = not failing
                self._record(self._phase, "check passed" if ok else f"check failed: {failing[0]}",
                             kind="probe")
            else:
                assert step.wait is not None
                await self._guarded(workflow.sleep(step.wait, summary=step.label()))
                self._stale = True
                ok = True
            if not ok:
                self._record(self._phase, f"rung {rung.name!r} stopped at step {index}", kind="action")
                return

    async def _await_approval(self, step: StepSpec, phase: Phase) -> None:
        label = step.label()
        wid = workflow.info().workflow_id
        now = workflow.now()
        self._pending = PendingDecision(
            kind="approval", allowed=[DecisionKind.APPROVE, DecisionKind.ABORT], step=label,
            since=now, deadline=now + step.approval_timeout,
            command=f"medkit approve|abort {wid} --run-id {workflow.info().run_id} "
                    "--operator NAME --reason TEXT",
        )
        self._transition(Phase.AWAITING_APPROVAL, f"step {label!r} requires approval")
        await self._notify("approval_needed", f"{self._policy.name}: approval needed for {label}",
                           f"Approve with: {self._pending.command}")
        timeout = step.approval_timeout
        escalations = 0
        while True:
            self._at_deadline = ("escalate" if escalations < self._policy.escalation.max_escalations
                                 else "hand over to ManualIntervention")
            self._set_details()
            try:
                await workflow.wait_condition(self._decided, timeout=timeout,
                                              timeout_summary=f"approval of {label}")
            except TimeoutError:
                if escalations >= self._policy.escalation.max_escalations:
                    self._pending = None
                    raise _NeedsHuman(
                        f"no decision on {label!r} after {escalations} escalations"
                    ) from None
                escalations += 1
                await self._escalate(f"approval of {label!r} still pending")
                timeout = self._policy.escalation.after
                self._pending.deadline = workflow.now() + timeout
                continue
            if self._abort is not None:
                raise _Aborted
            _, decision = self._take_decision()
            self._stale = True
            self._transition(phase, f"{label!r} approved: {decision.reason or 'no reason given'}",
                             actor=decision.operator)
            if self._paged:
                await self._notify("acknowledged", f"{self._policy.name}: approved by "
                                   f"{decision.operator}", f"Step {label} approved.")
            return

    async def _manual_intervention(
        self, reason: str
    ) -> tuple[DecisionKind, OperatorDecision] | None:
        """Wait for resolve, retry or abort, escalating on a timer; None if it healed meanwhile."""
        wid = workflow.info().workflow_id
        self._current_step = None
        await self._release_lease()
        self._pending = PendingDecision(
            kind="manual", allowed=[DecisionKind.RESOLVE, DecisionKind.RETRY, DecisionKind.ABORT],
            since=workflow.now(),
            command=f"medkit resolve|retry|abort {wid} --run-id {workflow.info().run_id} "
                    "--operator NAME --reason TEXT",
        )
        self._handover = reason
        self._at_deadline = "escalate"
        self._transition(Phase.MANUAL_INTERVENTION, reason)
        await self._notify("manual_intervention", f"{self._policy.name}: needs a human",
                           f"{reason}. Decide with: {self._pending.command}")
        escalations = 0
        while True:
            limit = self._policy.escalation.max_escalations
            timeout = self._policy.escalation.after if escalations < limit else None
            self._pending.deadline = workflow.now() + timeout if timeout is not None else None
            self._set_details()
            try:
                await workflow.wait_condition(lambda: self._decided() or self._source_resolved,
                                              timeout=timeout, timeout_summary="operator decision")
            except TimeoutError:
                escalations += 1
                await self._escalate(f"still in ManualIntervention: {reason}")
                continue
            if self._abort is not None:
                raise _Aborted
            if self._decision is None:
                if await self._revalidate_after_source_resolved():
                    return None
                continue
            kind, decision = self._take_decision()
            self._handover = None
            if kind == DecisionKind.RETRY:
                self._operator_retries += 1
                self._stale = True
            return kind, decision

    async def _revalidate_after_source_resolved(self) -> bool:
        """The detector says the problem is gone: check with medkit's own probes before closing."""
        self._source_resolved = False
        pending = self._pending
        if workflow.patched(HOLD_DECISIONS_PATCH):
            self._pending = None  # only abort while validating; the decision waits for the verdict
        self._transition(Phase.VALIDATING, "source reports resolved; validating before closing")
        try:
            healthy, why = await self._validate()
        except _NeedsHuman as refused:
            healthy, why = False, str(refused)
        self._record(self._phase, why, kind="probe")
        if healthy:
            return True
        self._pending = pending
        self._transition(Phase.MANUAL_INTERVENTION, f"still unhealthy after source resolved: {why}")
        return False

    async def _validate(self) -> tuple[bool, str]:
        """Probe `samples` times, `interval` apart (start to start, so the window is what the
        policy says); healthy when enough rounds pass every probe.

        Round k is due `k - 1` intervals after the first started, by workflow time (which a local
        activity's completion advances by its run time). Counting from the first round, rather
        than from each round's own start, keeps the workflow tasks between rounds from
        stretching the window: a late round makes the next timer shorter.
        """
        spec = self._policy.validation
        first_round = workflow.now()
        passed = 0
        last_failure = ""
        for sample in range(1, spec.samples + 1):
            round_ = await self._probe_all(f"validate {sample}/{spec.samples}")
            results = round_.results
            failing = [r.evidence() for r in results if not r.healthy]
            if failing:
                last_failure = failing[0]
            else:
                passed += 1
            if passed + (spec.samples - sample) < spec.needed:
                return False, (f"validation failed: {passed}/{sample} rounds healthy, "
                               f"{spec.needed} of {spec.samples} needed; {last_failure}")
            rest = first_round + sample * spec.interval - workflow.now()
            if sample < spec.samples and rest > timedelta(0):
                await self._guarded(workflow.sleep(rest, summary=VALIDATION_TIMER))
        return True, f"validation passed: {passed}/{spec.samples} rounds healthy"

    async def _finish(self, phase: Phase, reason: str, actor: str = "medkit") -> None:
        """End the recovery: the terminal transition comes first, so no decision can slip in
        while the lease is released and the end is announced. The release runs alongside the
        announcement and the closing store write; the run awaits it before it returns."""
        self._pending = None
        self._current_step = None
        self._outcome = Outcome(phase.value)
        self._transition(phase, reason, actor=actor,
                         also=[sa.OUTCOME.value_set(self._outcome.value)])
        if workflow.patched(REMEMBER_REPORTS_PATCH):
            workflow.upsert_memo({REPORTS_MEMO: self._remembered_reports()})
        self._releasing = asyncio.ensure_future(self._release_lease())
        if self._paged:
            await self._notify(_END_EVENT[phase], f"{self._policy.name}: {phase.value}", reason)

    # ----- side effects (all through activities) -------------------------------------------

    def _remembered_reports(self) -> list[str]:
        """The ids of the reports this run counted, bounded for its memo and for the run it
        continues as: the first and the latest MAX_REMEMBERED_REPORTS - 1."""
        counted = list(self._report_ids)
        return counted[:1] + counted[1:][-(MAX_REMEMBERED_REPORTS - 1):]

    async def _probe_all(self, purpose: str) -> ProbeRound:
        """One round of every probe of the service, in one local activity (short, read-only and
        frequent: no server round trip or extra workflow task per round); if it fails, every
        probe counts as unhealthy with the reason."""
        probes = self._policy.probes
        timeout = max(spec.timeout for spec in probes) + timedelta(seconds=5)
        try:
            round_: ProbeRound = await self._guarded(self._local_activity(
                "probe_service", ProbeRoundRequest(service=self._policy.name, probes=probes),
                result_type=ProbeRound, start_to_close_timeout=timeout, retry_policy=PROBE_RETRY,
                summary=f"{purpose}: probe {', '.join(spec.name for spec in probes)}",
            ))
        except ActivityError as err:
            if _refused(err):
                raise _NeedsHuman(f"the worker refused to probe {self._policy.name}: "
                                  f"{_cause(err)}") from err
            round_ = ProbeRound(seconds=0, results=[
                ProbeResult(probe=spec.name, kind=spec.kind, healthy=False, failure="error",
                            detail=f"probe failed: {_cause(err)}", at=workflow.now())
                for spec in probes])
        self._stale = False
        self._probed_at = workflow.now()
        self._last_round_healthy = all(result.healthy for result in round_.results)
        return round_

    def _probes_stale(self) -> bool:
        """Whether the last probe round is too old to act on: a wait medkit knows of (a backoff,
        an approval, a queued lease, an action) or, in runs with FRESH_PROBES_PATCH, any time
        longer than PROBE_FRESHNESS since that round."""
        if self._stale:
            return True
        if not workflow.patched(FRESH_PROBES_PATCH):
            return False
        return self._probed_at is None or workflow.now() - self._probed_at > PROBE_FRESHNESS

    async def _still_needed(self, step: str) -> bool:
        """Whether the service still needs acting on before `step`; probes again first when
        anything waited (a queued lease, an approval, a backoff) since the last probe round.

        Only probes that saw the problem can clear it: when assessment found every probe
        passing, the detector's report stands and this is True, until the source reports the
        problem resolved (its latest report); then the probes are asked again and decide.
        Healthy again before medkit acted at all ends the recovery as Dismissed; healthy after
        earlier actions skips the rest of the rung, and validation decides."""
        if not self._probes_saw_problem:
            if not (self._report_withdrawn and workflow.patched(WITHDRAWN_REPORT_PATCH)):
                return True
            self._stale = True
            self._record(self._phase, f"the source reported the problem resolved, and no probe "
                         f"saw it: probing again before {step}", kind="probe")
        if self._probes_stale():
            round_ = await self._probe_all(f"verify before {step}")
            failing = [r.evidence() for r in round_.results if not r.healthy]
            if failing:
                still = "still failing" if self._probes_saw_problem else "failing"
                self._record(self._phase, f"{still} before {step}: {failing[0]}", kind="probe")
        if not self._last_round_healthy:
            return True
        healthy = ("healthy again" if self._probes_saw_problem
                   else "resolved, its source says, and healthy")
        if not self._acted:
            raise _AlreadyHealthy(f"{healthy} before {step}: every probe passes; nothing done")
        self._record(self._phase, f"{healthy} before {step}: not acting; validating",
                     kind="probe")
        return False

    async def _act(self, action_name: str) -> bool:
        spec: ActionSpec = self._policy.actions[action_name]
        if spec.kind == "notify":
            await self._notify("action", f"{self._policy.name}: {action_name}",
                               spec.message or f"step {action_name}", routes=spec.routes,
                               page=False)
            return True
        await self._check_budgets(action_name)
        request = ActionRequest(
            workflow_id=workflow.info().workflow_id, service=self._policy.name,
            action_name=action_name, spec=spec, dry_run=self._dry_run,
            policy_digest=self._policy_digest,
            reason=f"{self._phase.value}: {self._current_step}",
        )
        summary = f"{action_name} ({spec.kind}){' [dry-run]' if self._dry_run else ''}"
        timeout = spec.time_budget() + timedelta(seconds=30)
        try:
            if runs_locally(spec):
                result: ActionResult = await self._guarded(self._local_activity(
                    spec.activity, request, result_type=ActionResult,
                    start_to_close_timeout=timeout, retry_policy=ACTION_RETRY, summary=summary,
                ))
            else:
                result = await self._guarded(workflow.execute_activity(
                    spec.activity, request, result_type=ActionResult,
                    start_to_close_timeout=timeout,
                    heartbeat_timeout=None if self._dry_run else ACTION_HEARTBEAT,
                    retry_policy=ACTION_RETRY,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=summary,
                ))
        except ActivityError as err:
            if _refused(err):
                raise _NeedsHuman(f"the worker refused {action_name}: {_cause(err)}") from err
            self._acted, self._stale = True, True
            self._record(self._phase, f"{action_name} failed: {_cause(err)}", kind="action")
            self._set_details()
            if _failed_with(err, OUTCOME_UNKNOWN) and workflow.patched(OUTCOME_UNKNOWN_PATCH):
                raise _NeedsHuman(
                    f"{action_name} may have run and its outcome is unknown (a worker died while "
                    "it ran); medkit does not run it again, nor any other step, by itself: check "
                    "the service, then resolve, or retry to run the ladder again") from err
            return False
        self._acted, self._stale = True, True
        mark = "[dry-run] " if result.simulated else ""
        self._record(self._phase, f"{mark}{action_name}: {result.detail}", kind="action")
        self._set_details()
        return result.ok

    async def _check_budgets(self, action_name: str) -> None:
        """Hand over to a human instead of acting when the action's budget is used up."""
        for budget in self._policy.budgets:
            if action_name not in budget.actions:
                continue
            activities = sorted({self._policy.actions[name].activity for name in budget.actions})
            window = budget.window.total_seconds()
            used: int = await self._guarded(self._local_activity(
                "count_recent_actions",
                BudgetQuery(service=self._policy.name, activities=activities, window_seconds=window),
                result_type=int, start_to_close_timeout=timedelta(seconds=10),
                retry_policy=STORE_RETRY, summary=f"budget check for {action_name}",
            ))
            if used >= budget.max_actions:
                raise _NeedsHuman(
                    f"budget exhausted: {used} of {budget.max_actions} {'/'.join(budget.actions)} "
                    f"actions used on {self._policy.name} in the last {budget.window}; "
                    f"not running {action_name}"
                )

    def _ask_for_lease(self) -> None:
        """Send the lease request now, if this recovery needs one and has none: the run asks
        while its assessment probes run, so the answer is usually there when it is needed."""
        limits = self._policy.fleet
        capped = limits.max_services is not None or limits.max_percent is not None
        if self._dry_run or self._lease is not None or not (self._policy.exclusive or capped):
            return
        # Decided when the request is made, never on whether its answer has come: a local
        # activity's result reaches the code at other moments on replay than it did live.
        self._release_after_answer = workflow.patched(RELEASE_AFTER_ANSWER_PATCH)
        info = workflow.info()
        self._lease = LeaseRequest(
            request_id=str(workflow.uuid4()), service=self._policy.name,
            workflow_id=info.workflow_id, run_id=info.run_id, task_queue=info.task_queue,
            limits=limits,
        )
        self._lease_answer = asyncio.ensure_future(self._local_activity(
            "request_fleet_lease", self._lease, result_type=LeaseDecision,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=LEASE_RETRY,
            summary=f"ask the fleet coordinator to act on {self._lease.service}",
        ))

    async def _acquire_lease(self) -> None:
        """Hold the fleet coordinator's lease before acting: queue behind another recovery of the
        same service, or hand over to a human when the fleet's blast-radius cap is reached."""
        self._ask_for_lease()
        request, answer = self._lease, self._lease_answer
        if request is None or self._lease_granted:
            return
        assert answer is not None, "a lease request that is neither granted nor answered"
        # An abort stops waiting for the answer, not the request (see _release_lease); one that
        # came already leaves the request alone anyway.
        waited: Awaitable[LeaseDecision] = answer
        if self._abort is None and self._release_after_answer:
            waited = asyncio.shield(answer)
        try:
            decision = await self._guarded(waited)
        except ActivityError as err:
            self._lease, self._lease_answer = None, None  # the coordinator never saw it
            raise _NeedsHuman(f"the worker refused to ask for the fleet lease on "
                              f"{self._policy.name}: {_cause(err)}; holding instead of acting") from err
        self._lease_answer = None
        queued = False
        while decision.verdict == "queued":
            queued = True
            self._current_step = f"queued: {decision.reason}"
            self._record(self._phase, decision.reason, kind="safety")
            self._set_details()
            await self._guarded(workflow.wait_condition(
                lambda: request.request_id in self._lease_decisions))
            decision = self._lease_decisions.pop(request.request_id)
            self._stale = True
        if decision.verdict == "held":
            self._lease = None  # the coordinator keeps nothing for a held request
            raise _NeedsHuman(f"{decision.reason}; holding instead of acting")
        self._lease_granted = True
        if queued:
            self._record(self._phase, decision.reason, kind="safety")

    async def _release_lease(self) -> None:
        """Give back the lease, or the place in its queue, or a request whose answer has not
        come yet (an abort during the request): the coordinator forgets whichever of them it has.

        A request still on its way is answered first (up to LEASE_ANSWER_WAIT): once sent it
        reaches the coordinator whether or not the recovery still waits, and a release that
        got there before it would find nothing to release, and the request would then be
        granted to a recovery that has ended."""
        if self._lease is None:
            return
        lease, self._lease, self._lease_granted = self._lease, None, False
        answer, self._lease_answer = self._lease_answer, None
        if answer is not None:
            if self._release_after_answer and not answer.done():
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        answer.done, timeout=LEASE_ANSWER_WAIT,
                        timeout_summary=f"the answer to the lease request on {lease.service}")
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # taken, not raised: a failed request leaves less to release
        release = LeaseRelease(service=lease.service, workflow_id=lease.workflow_id,
                               run_id=lease.run_id, task_queue=lease.task_queue)
        try:
            await self._local_activity(
                "release_fleet_lease", release, result_type=None,
                start_to_close_timeout=timedelta(seconds=10), retry_policy=RELEASE_RETRY,
                summary=f"hand back the lease on {lease.service}",
            )
        except ActivityError as err:
            workflow.logger.warning("lease release failed (the coordinator reclaims it once this "
                                    "recovery has ended): %s", _cause(err))

    async def _record_incident(self) -> None:
        """Keep the incident store current: write at each transition, whenever something new
        happens while a human decision is pending, and once at the end.

        A regular activity while the recovery runs, so it never waits on the database; writes
        coalesce while one is in flight, and each write stores every entry not yet stored. No
        write is scheduled while a local activity runs: the task cannot end before it does, so
        the write would leave no sooner, only with older news, and its completion would wake one
        more workflow task. The last write is a local activity: the recovery waits for it anyway,
        and so it completes in the same workflow task instead of one more.
        """
        while True:
            await workflow.wait_condition(lambda: self._store_due() or self._closing)
            if len(self._timeline) == self._stored and self._reports == self._stored_reports:
                return
            status = self.status()
            self._stored = len(status.timeline)
            self._stored_phase = status.phase
            self._stored_reports = status.reports
            execute = self._local_activity if self._closing else workflow.execute_activity
            try:
                await execute(
                    "record_incident", IncidentRecord(run_id=workflow.info().run_id, status=status),
                    result_type=IncidentRecorded, start_to_close_timeout=timedelta(seconds=10),
                    retry_policy=STORE_RETRY, summary=f"record {status.phase.value} in the incident store",
                )
            except ActivityError as err:
                workflow.logger.warning("incident store write failed: %s", _cause(err))

    async def _escalate(self, reason: str) -> None:
        self._escalations += 1
        self._record(self._phase, f"escalation {self._escalations}: {reason}", kind="escalation")
        await self._notify("escalation", f"{self._policy.name}: escalation {self._escalations}",
                           reason)

    async def _notify(self, event: NotificationEvent, title: str, text: str,
                      routes: list[str] | None = None, page: bool = True) -> None:
        """Send to the given routes (default: the escalation routes); failures are recorded."""
        names = routes if routes is not None else self._policy.escalation.routes
        if not names:
            return
        if page:
            self._paged = True
        info = workflow.info()
        self._notifications += 1
        notification = Notification(
            workflow_id=info.workflow_id, service=self._policy.name, event=event,
            phase=self._phase, severity=self._severity, title=title, text=text,
            evidence=self._evidence[:10], dedup_key=f"{info.workflow_id}/{info.run_id}",
            notification_id=f"{info.workflow_id}/{info.run_id}/{self._notifications}",
            dry_run=self._dry_run,
            command=self._pending.command if self._pending is not None else None,
        )
        sends = [
            workflow.execute_activity(
                "notify", NotifyRequest(route_name=name, route=self._policy.routes[name],
                                        notification=notification),
                result_type=NotifyResult, start_to_close_timeout=timedelta(seconds=30),
                retry_policy=NOTIFY_RETRY, summary=f"notify {name}: {event}",
            )
            for name in names
        ]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                delivered = f"failed: {_cause(outcome)}"
                self._record(self._phase, f"notification to {name} failed: {_cause(outcome)}",
                             kind="notification")
            else:
                delivered = event
                self._record(self._phase, f"notified {name}: {event}", kind="notification")
            if page:
                self._paged_routes[name] = delivered
        self._set_details()

    async def _guarded(self, awaitable: Awaitable[T]) -> T:
        """Await while watching for an abort; on abort cancel the work and unwind."""
        if self._abort is not None:
            raise _Aborted
        work = asyncio.ensure_future(awaitable)
        aborted = asyncio.ensure_future(workflow.wait_condition(lambda: self._abort is not None))
        await workflow.wait([work, aborted], return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            aborted.cancel()
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, ActivityError):
            await work  # actions confirm their cancellation before the recovery ends
        raise _Aborted

    # ----- bookkeeping ---------------------------------------------------------------------

    def _transition(self, to: Phase, reason: str, actor: str = "medkit",
                    also: Sequence[SearchAttributeUpdate[Any]] = ()) -> None:
        """Move to a phase: timeline entry, MedkitPhase (with any other search attributes that
        change at the same moment, in one upsert), log line and current details."""
        before = self._phase
        self._record(to, reason, actor=actor)
        workflow.upsert_search_attributes([sa.PHASE.value_set(to.value), *also])
        workflow.logger.info("recovery %s -> %s: %s", before.value, to.value, reason)
        self._set_details()

    def _record(self, to: Phase, reason: str, actor: str = "medkit",
                kind: TimelineKind = "transition", at: datetime | None = None) -> None:
        self._timeline.append(TimelineEntry(
            at=at or workflow.now(), from_phase=self._phase, to_phase=to, reason=reason, actor=actor,
            kind=kind,
        ))
        self._phase = to

    def _store_due(self) -> bool:
        """A write is due at a new phase, or when something happened while a human decides, once
        no local activity holds the workflow task open; the terminal phase is left to the closing
        write."""
        grown = len(self._timeline) > self._stored or self._reports != self._stored_reports
        changed = self._phase != self._stored_phase or self._pending is not None
        idle = self._local_activities == 0
        return grown and changed and idle and self._outcome is None

    async def _local_activity(self, activity: str, arg: Any, *, result_type: type | None,
                              start_to_close_timeout: timedelta, retry_policy: RetryPolicy,
                              summary: str) -> Any:
        """Run a local activity, counted while it runs: no store write is scheduled meanwhile
        (see _record_incident).

        A local activity's failure reaches workflow code as the bare ApplicationError or
        TimeoutError, not wrapped as a regular activity's is; it is wrapped here so every caller
        handles both kinds through one `except ActivityError`."""
        self._local_activities += 1
        try:
            return await workflow.execute_local_activity(
                activity, arg, result_type=result_type,
                start_to_close_timeout=start_to_close_timeout, retry_policy=retry_policy,
                summary=summary,
            )
        except (ApplicationError, ActivityTimeoutError) as err:
            raise ActivityError(
                f"local activity {activity} failed", scheduled_event_id=0, started_event_id=0,
                identity="", activity_type=activity, activity_id="", retry_state=None,
            ) from err
        finally:
            self._local_activities -= 1

    def _decided(self) -> bool:
        return self._decision is not None or self._abort is not None

    def _take_decision(self) -> tuple[DecisionKind, OperatorDecision]:
        assert self._decision is not None
        decision, self._decision = self._decision, None
        self._pending = None
        return decision

    def _story(self) -> str:
        """The recovery in one line, first in the current details.

        The Temporal UI's summary line is the static summary set at start, from the first
        report, and Temporal cannot change it afterwards; this line is what it would say now."""
        parts = [f"{self._policy.name}: {self._phase.value}"]
        if self._category is not None and self._severity is not None:
            parts.append(f"{self._severity.value} {self._category}")
        else:
            parts.append("not assessed yet")
        if self._attempts:
            parts.append(f"attempt {self._attempts}/{self._policy.retry.max_attempts}")
        if self._pending is not None:
            parts.append(f"waiting for {' or '.join(self._pending.allowed)}")
        if self._dry_run:
            parts.append("DRY-RUN")
        return " · ".join(parts)

    def _tried(self) -> list[str]:
        """What medkit did and how it went: every action, and every check or validation that
        failed, from the timeline."""
        return [
            f"{entry.at:%H:%M:%S} {entry.reason}" for entry in self._timeline
            if entry.kind == "action" or (entry.kind == "probe" and entry.reason.startswith(
                ("validation failed", "check failed")))
        ]

    def _paging(self) -> str:
        """Who was paged, and a warning when the policy gives nobody to page."""
        routes = self._policy.escalation.routes
        if not routes:
            return ("**Paged:** ⚠ nobody: this service's policy has no escalation routes "
                    "(set `escalation.routes`), so watch this page or `medkit list --open`")
        if not self._paged_routes:
            return f"**Paged:** nobody yet (routes: {', '.join(routes)})"
        return "**Paged:** " + ", ".join(
            f"{name} ({outcome})" for name, outcome in self._paged_routes.items())

    def _decision_commands(self) -> list[str]:
        """One command per decision the recovery accepts now, ready to paste into a shell."""
        wid = shlex.quote(workflow.info().workflow_id)
        return [f"`medkit {kind.value} {wid} --operator \"$USER\" --reason \"...\"`"
                for kind in self._allowed()]

    def _set_details(self) -> None:
        """Refresh the current details the Temporal UI shows: the one-line story first, then
        why, what was tried, what it waits for and how to decide."""
        lines = [
            self._story(),
            f"**Phase:** {self._phase.value} · **Severity:** "
            f"{self._severity.value if self._severity else 'assessing'} · **Attempt:** "
            f"{self._attempts}/{self._policy.retry.max_attempts}"
            f"{f' (operator retry {self._operator_retries})' if self._operator_retries else ''}"
            f"{' · **DRY-RUN**' if self._dry_run else ''}",
            f"**Service:** {self._policy.name} · **Category:** {self._category or '?'} · "
            f"**Reports:** {self._reports} · **Escalations:** {self._escalations}",
        ]
        if self._why is not None:
            lines.append(f"**Why:** {self._why}")
        if self._handover is not None and self._phase == Phase.MANUAL_INTERVENTION:
            lines.append(f"**Why a human:** {self._handover}")
        if self._evidence:
            lines.append("**Evidence:**")
            lines.extend(f"- {line}" for line in self._evidence[:5])
        tried = self._tried()
        if tried:
            earlier = f" ({len(tried) - 5} earlier not shown)" if len(tried) > 5 else ""
            lines.append(f"**Tried:**{earlier}")
            lines.extend(f"- {line}" for line in tried[-5:])
        if self._current_step:
            lines.append(f"**Step:** {self._current_step}")
        if self._pending is not None:
            pending = self._pending
            lines.append(f"**Waiting since:** {pending.since:%Y-%m-%d %H:%M:%S} UTC"
                         f"{f' for approval of {pending.step}' if pending.step else ''}")
            if pending.deadline is not None:
                lines.append(f"**Next escalation:** {pending.deadline:%Y-%m-%d %H:%M:%S} UTC "
                             f"({self._at_deadline} if still undecided)")
            else:
                lines.append("**Next escalation:** none (all "
                             f"{self._policy.escalation.max_escalations} escalations sent)")
        elif self._outcome is not None:
            lines.append(f"**Outcome:** {self._outcome.value}")
        if not self._phase.terminal or self._paged_routes:
            lines.append(self._paging())
        commands = self._decision_commands()
        if commands:
            lines.append("**Decide:**" if self._pending is not None else "**Stop it:**")
            lines.extend(f"- {command}" for command in commands)
        workflow.set_current_details("\n\n".join(lines))

    # ----- operator and detector messages --------------------------------------------------

    def _allowed(self) -> list[DecisionKind]:
        if self._phase.terminal:
            return []
        if self._pending is not None and self._decision is None:
            return list(self._pending.allowed)
        return [DecisionKind.ABORT]

    def _rejection(self, kind: DecisionKind) -> str | None:
        if self._phase.terminal:
            return f"cannot {kind.value}: the recovery already ended as {self._phase.value}"
        if self._abort is not None:
            return f"cannot {kind.value}: the recovery is being aborted"
        allowed = self._allowed()
        if kind not in allowed:
            return (f"cannot {kind.value} while the recovery is in {self._phase.value}; "
                    f"accepted now: {', '.join(allowed)}")
        return None

    def _accept(self, kind: DecisionKind, decision: OperatorDecision, via: str) -> DecisionVerdict:
        if kind == DecisionKind.ABORT:
            self._abort = decision
        else:
            self._decision = (kind, decision)
        self._record(self._phase, f"{kind.value} ({via}): {decision.reason or 'no reason given'}",
                     actor=decision.operator, kind="decision")
        return DecisionVerdict(decision=kind, accepted=True, phase=self._phase,
                               message=f"{kind.value} accepted in {self._phase.value}")

    def _signalled(self, kind: DecisionKind, decision: OperatorDecision) -> None:
        rejection = self._rejection(kind)
        if rejection is not None:
            self._record(self._phase, f"ignored signal: {rejection}", actor=decision.operator,
                         kind="ignored")
            return
        self._accept(kind, decision, "signal")

    async def _updated(self, kind: DecisionKind, decision: OperatorDecision) -> DecisionVerdict:
        """Apply a decision and answer with where it led: the phase the recovery moved into,
        or for an abort the phase it ended in (see ABORT_VERDICT_PATCH)."""
        verdict = self._accept(kind, decision, "update")
        if kind == DecisionKind.ABORT and workflow.patched(ABORT_VERDICT_PATCH):
            await workflow.wait_condition(lambda: self._phase.terminal)
            verdict.phase = self._phase
            verdict.message = (
                f"abort accepted; the recovery ended as {self._phase.value}"
                if self._phase == Phase.ABORTED else
                f"abort accepted, but the recovery ended as {self._phase.value} before the abort "
                "took effect")
            return verdict
        before = len(self._timeline)
        await workflow.wait_condition(
            lambda: any(e.kind == "transition" for e in self._timeline[before:])
        )
        verdict.phase = self._phase
        verdict.message = f"{kind.value} accepted; the recovery is now {self._phase.value}"
        return verdict

    def _validate_decision(self, kind: DecisionKind) -> None:
        rejection = self._rejection(kind)
        if rejection is not None:
            raise ApplicationError(rejection, type="DecisionRejected", non_retryable=True)

    @workflow.signal
    def report(self, detection: Detection) -> None:
        """A further detection of the same problem joins this recovery and is counted."""
        if self._take_report(detection):
            self._set_details()

    @workflow.signal
    def report_batch(self, batch: ReportBatch) -> None:
        """Several further detections at once (coalesced by the gateway), each taken as `report`."""
        taken = [self._take_report(detection) for detection in batch.detections]
        if any(taken):
            self._set_details()

    def _take_report(self, detection: Detection) -> bool:
        """Count and record one report; False when it changes nothing (a detection already
        counted, such as an alert resent after a failed delivery, or a recovery that has ended,
        where it is recorded as ignored)."""
        if detection.detection_id in self._report_ids:
            return False
        if self._phase.terminal:
            if (detection.status == "firing" and self._late_report is None
                    and workflow.patched(LATE_REPORT_PATCH)):
                self._late_report = detection
                self._report_ids[detection.detection_id] = None
                self._record(self._phase, f"report from {detection.source} arrived while the "
                             f"recovery was ending: {detection.summary or 'problem'}; a new "
                             "recovery starts with it", actor=detection.source, kind="report")
                return True
            self._record(self._phase, f"ignored report from {detection.source}: recovery ended",
                         actor=detection.source, kind="ignored")
            return False
        self._reports += 1
        self._report_ids[detection.detection_id] = None
        self._report_withdrawn = detection.status == "resolved"
        if detection.status == "resolved":
            self._source_resolved = True
            reason = f"source reports resolved: {detection.summary}; medkit still validates"
        else:
            reason = f"duplicate report #{self._reports} joined" + (
                f": {detection.summary}" if detection.summary else "")
        if self._reports <= MAX_REPORTS_IN_TIMELINE or detection.status == "resolved":
            self._record(self._phase, reason, actor=detection.source, kind="report")
        return True

    @workflow.signal
    def lease_decision(self, decision: LeaseDecision) -> None:
        """The fleet coordinator's answer to this recovery's lease request."""
        self._lease_decisions[decision.request_id] = decision

    @workflow.signal
    def approve(self, decision: OperatorDecision) -> None:
        """Approve the step awaiting approval (ignored, and recorded, in any other phase)."""
        self._signalled(DecisionKind.APPROVE, decision)

    @workflow.signal
    def abort(self, decision: OperatorDecision) -> None:
        """Abort the recovery: running work is cancelled and the recovery ends as Aborted."""
        self._signalled(DecisionKind.ABORT, decision)

    @workflow.signal
    def resolve(self, decision: OperatorDecision) -> None:
        """A human fixed it: end ManualIntervention as Resolved."""
        self._signalled(DecisionKind.RESOLVE, decision)

    @workflow.signal
    def retry(self, decision: OperatorDecision) -> None:
        """Run the remediation ladder again from ManualIntervention."""
        self._signalled(DecisionKind.RETRY, decision)

    @workflow.update(name="approve")
    async def approve_update(self, decision: OperatorDecision) -> DecisionVerdict:
        """Approve, answering with the phase the recovery moved into."""
        return await self._updated(DecisionKind.APPROVE, decision)

    @approve_update.validator
    def _validate_approve(self, decision: OperatorDecision) -> None:
        self._validate_decision(DecisionKind.APPROVE)

    @workflow.update(name="abort")
    async def abort_update(self, decision: OperatorDecision) -> DecisionVerdict:
        """Abort, answering once the recovery has ended: as Aborted, or as whatever end it
        reached before the abort took effect (said so in the verdict)."""
        return await self._updated(DecisionKind.ABORT, decision)

    @abort_update.validator
    def _validate_abort(self, decision: OperatorDecision) -> None:
        self._validate_decision(DecisionKind.ABORT)

    @workflow.update(name="resolve")
    async def resolve_update(self, decision: OperatorDecision) -> DecisionVerdict:
        """Resolve, answering once the recovery has ended as Resolved."""
        return await self._updated(DecisionKind.RESOLVE, decision)

    @resolve_update.validator
    def _validate_resolve(self, decision: OperatorDecision) -> None:
        self._validate_decision(DecisionKind.RESOLVE)

    @workflow.update(name="retry")
    async def retry_update(self, decision: OperatorDecision) -> DecisionVerdict:
        """Retry, answering once the ladder has started again."""
        return await self._updated(DecisionKind.RETRY, decision)

    @retry_update.validator
    def _validate_retry(self, decision: OperatorDecision) -> None:
        self._validate_decision(DecisionKind.RETRY)

    @workflow.query
    def status(self) -> RecoveryStatus:
        """Phase, severity, current step, attempts, pending decision and the whole timeline."""
        info = workflow.info()
        return RecoveryStatus(
            workflow_id=info.workflow_id, service=self._policy.name,
            incident_key=self._input.detection.incident_key, phase=self._phase,
            severity=self._severity, category=self._category, evidence=list(self._evidence),
            current_step=self._current_step, attempts=self._attempts,
            max_attempts=self._policy.retry.max_attempts, operator_retries=self._operator_retries,
            escalations=self._escalations,
            reports=self._reports, dry_run=self._dry_run, pending_decision=self._pending,
            outcome=self._outcome, started_at=self._started_at, timeline=list(self._timeline),
            source_resolved=self._source_resolved,
        )


def runs_locally(spec: ActionSpec) -> bool:
    """Whether an action step runs as a local activity: one admin request (an HTTP action, a
    breaker toggle without trials) ends within the workflow task that starts it, so the step
    costs no server round trip and no extra workflow task. Anything that waits (restarts,
    trials, commands, rollouts) stays a regular activity, with heartbeats, mid-step
    cancellation and its own events in the history."""
    return isinstance(spec, HttpAction) or (isinstance(spec, BreakerAction) and not spec.trials)


def _failed_with(err: ActivityError, error_type: str) -> bool:
    """Whether the activity failed with an ApplicationError of `error_type`."""
    cause = err.cause
    return isinstance(cause, ApplicationError) and cause.type == error_type


def _refused(err: ActivityError) -> bool:
    """Whether the worker refused the activity because its own policy does not hold the spec."""
    return _failed_with(err, POLICY_MISMATCH)


def _reported_at(detected: datetime, started: datetime) -> datetime:
    """When the detector saw the problem (a naive time is UTC), never later than the start."""
    if detected.tzinfo is None:
        detected = detected.replace(tzinfo=UTC)
    return min(detected, started)


def _cause(err: BaseException) -> str:
    """The innermost message of an activity failure, for the timeline."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err) or type(err).__name__
