"""BreakerEntityWorkflow: a circuit breaker whose state is durable and shared by a fleet.

Processes signal each call's outcome (`report`); operators trip or reset it (`command`, an
update that answers with the new status); anyone reads it (`status`). Failures in a row open it,
a durable timer moves it to half-open, trial successes start a gradual traffic ramp whose steps
are durable timers, and the ramp's end closes it; a failed trial or ramp call reopens it.
No I/O: the state machine only reads workflow time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.breaker_entity import (
        MAX_TRANSITIONS_KEPT,
        BreakerCommand,
        BreakerEntityState,
        BreakerTransition,
        EntityState,
        OutcomeReport,
    )

RAMP_PATCH = "breaker-entity-ramp"
"""Histories recorded before the ramp existed closed straight after the trials; they replay so."""

MIN_TIMER = timedelta(milliseconds=1)
"""An open time already over still waits on a timer, and a timer needs a positive duration."""


@workflow.defn
class BreakerEntityWorkflow:
    """One breaker's state for a whole fleet; runs until terminated, continuing as new when long."""

    @workflow.init
    def __init__(self, state: BreakerEntityState) -> None:
        self._state = state
        self._changed = False

    @workflow.run
    async def run(self, state: BreakerEntityState) -> None:
        """Wait for reports and commands; while open or ramping, also for the next deadline."""
        while True:
            self._changed = False
            deadline, summary = self._next_deadline()
            try:
                await workflow.wait_condition(
                    lambda: self._changed or self._should_continue_as_new(),
                    timeout=max(deadline - workflow.now(), MIN_TIMER) if deadline else None,
                    timeout_summary=summary,
                )
            except TimeoutError:
                if deadline == self._next_deadline()[0]:
                    self._deadline_reached()
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._state.reports = 0
                workflow.continue_as_new(self._state)

    @workflow.signal
    def report(self, outcome: OutcomeReport) -> None:
        """Count one call's outcome: failures in a row open; in half-open, trials decide; while
        ramping, one failure reopens."""
        state, settings = self._state, self._state.settings
        state.reports += 1
        self._changed = True
        if state.state == "closed":
            if outcome.success:
                state.consecutive_failures = 0
                return
            state.consecutive_failures += 1
            if state.consecutive_failures >= settings.failure_threshold:
                self._open(f"{state.consecutive_failures} failures in a row (last from "
                           f"{outcome.reporter}: {outcome.detail or 'failed'})")
        elif state.state == "half_open":
            if not outcome.success:
                self._open(f"trial call failed ({outcome.reporter}: {outcome.detail or 'failed'})")
                return
            state.trial_successes += 1
            if state.trial_successes >= settings.half_open_successes:
                reason = f"{state.trial_successes} trial calls succeeded"
                if settings.ramp_for and workflow.patched(RAMP_PATCH):
                    self._ramp_to(1, reason)
                else:
                    self._move("closed", reason)
        elif state.state == "ramping" and not outcome.success:
            self._open(f"call failed while ramping at {state.traffic_fraction:.0%} "
                       f"({outcome.reporter}: {outcome.detail or 'failed'})")
        # While open, reports are of calls admitted before it opened: they change nothing.

    @workflow.update
    def command(self, command: BreakerCommand) -> BreakerEntityState:
        """Trip (open now, for the configured open time) or reset (close now); returns the status."""
        reason = f"{command.action} by {command.operator}: {command.reason}"
        if command.action == "trip":
            self._open(reason)
        elif self._state.state != "closed":
            self._move("closed", reason)
        self._changed = True
        return self._state

    @workflow.query
    def status(self) -> BreakerEntityState:
        """The current state, counters and recent transitions."""
        return self._state

    def _next_deadline(self) -> tuple[datetime | None, str]:
        """The time-driven change still due: the end of the open time, or the ramp's next step."""
        if self._state.state == "open":
            return self._state.open_until, "open time of the breaker"
        if self._state.state == "ramping":
            return self._state.next_step_at, f"ramp step {self._state.ramp_step}"
        return None, ""

    def _deadline_reached(self) -> None:
        state = self._state
        if state.state == "open":
            self._move("half_open", "open time elapsed")
        elif state.ramp_step >= state.settings.ramp_steps:
            self._move("closed", "traffic ramp completed")
        else:
            self._ramp_to(state.ramp_step + 1, f"ramp step {state.ramp_step} elapsed")

    def _ramp_to(self, step: int, reason: str) -> None:
        """Admit `step / ramp_steps` of the traffic until the step's durable timer fires."""
        settings = self._state.settings
        if self._state.state != "ramping":
            self._move("ramping", reason)
        self._state.ramp_step = step
        self._state.traffic_fraction = step / settings.ramp_steps
        self._state.next_step_at = workflow.now() + settings.ramp_for / settings.ramp_steps

    def _should_continue_as_new(self) -> bool:
        return (self._state.reports >= self._state.settings.reports_per_run
                or workflow.info().is_continue_as_new_suggested())

    def _open(self, reason: str) -> None:
        self._state.open_until = workflow.now() + self._state.settings.open_for
        self._move("open", reason)

    def _move(self, to: EntityState, reason: str) -> None:
        state = self._state
        state.transitions = [*state.transitions, BreakerTransition(
            at=workflow.now(), from_state=state.state, to_state=to, reason=reason[:500],
        )][-MAX_TRANSITIONS_KEPT:]
        state.state = to
        state.consecutive_failures = 0
        state.trial_successes = 0
        state.ramp_step = 0
        state.next_step_at = None
        if to != "open":
            state.open_until = None
        state.traffic_fraction = {"closed": 1.0, "open": 0.0, "half_open": state.settings.trial_fraction,
                                  "ramping": 0.0}[to]
