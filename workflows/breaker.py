"""BreakerEntityWorkflow: a circuit breaker whose state is durable and shared by a fleet.

Processes signal each call's outcome (`report`); operators trip or reset it (`command`, an
update that answers with the new status); anyone reads it (`status`). Failures in a row open it,
a durable timer moves it to half-open, trial successes close it and a failed trial reopens it.
No I/O: the state machine only reads workflow time.
"""

from __future__ import annotations

from datetime import timedelta

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
        """Wait for reports and commands; while open, also for the end of the open time."""
        while True:
            self._changed = False
            open_until = self._state.open_until if self._state.state == "open" else None
            try:
                await workflow.wait_condition(
                    lambda: self._changed or self._should_continue_as_new(),
                    timeout=max(open_until - workflow.now(), MIN_TIMER) if open_until else None,
                    timeout_summary="open time of the breaker",
                )
            except TimeoutError:
                if self._state.state == "open" and open_until == self._state.open_until:
                    self._move("half_open", "open time elapsed")
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._state.reports = 0
                workflow.continue_as_new(self._state)

    @workflow.signal
    def report(self, outcome: OutcomeReport) -> None:
        """Count one call's outcome: failures in a row open; in half-open, trials decide."""
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
                self._move("closed", f"{state.trial_successes} trial calls succeeded")
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
        if to != "open":
            state.open_until = None
