"""Failed action attempts leave their reason in the action ledger, not a row that looks running."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.child_env import redact
from activities.idempotency import off_loop, step_key
from models.actions import ActionRequest
from store.ledger import ActionLedger

MAX_ERROR_CHARS = 500
"""How much of a failure's message the ledger keeps: enough to read, never a whole output."""


class _RecordFailures(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, ledger: ActionLedger) -> None:
        super().__init__(next)
        self._ledger = ledger

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception as err:
            if input.args and isinstance(input.args[0], ActionRequest):
                await self._record(err)
            raise

    async def _record(self, err: Exception) -> None:
        """Note the failed attempt on the step's ledger row, if the action opened one."""
        failed = {"attempt": activity.info().attempt, "error": redact(str(err))[:MAX_ERROR_CHARS],
                  "type": getattr(err, "type", None) or type(err).__name__}
        try:
            await off_loop(self._ledger.progress, step_key(), failed=failed)
        except KeyError:
            return  # refused before it opened a row: nothing ran, the history says why
        except Exception as store_err:  # the action's own error is what the caller needs
            structlog.get_logger("medkit.ledger").warning(
                "could not record a failed action in the ledger", error=str(store_err))


class ActionFailureInterceptor(Interceptor):
    """Records why an action attempt failed on its ledger row, so `medkit incidents show` says
    FAILED with the reason instead of showing the step as still in progress."""

    def __init__(self, ledger: ActionLedger) -> None:
        self._ledger = ledger

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap each activity execution."""
        return _RecordFailures(next, self._ledger)
