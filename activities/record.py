"""Activities over medkit's memory across incidents: record a run, count a service's recent actions.

Both are meant to run as local activities (one short transaction each). The database work
runs in a thread of the ledger's pool (`in_ledger_thread`) so a slow database never blocks the
worker's event loop nor takes the default pool's threads from other activities, and on SQLite waits
for another writer's lock only STORE_BUSY_TIMEOUT_MS, well inside the activities' timeout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.deps import ActivityDeps
from activities.idempotency import in_ledger_thread
from models.incident_record import BudgetQuery, IncidentRecord, IncidentRecorded
from store.incidents import IncidentStore
from store.ledger import count_actions, with_busy_timeout

STORE_BUSY_TIMEOUT_MS = 5_000
"""How long these activities wait for SQLite's write lock (every worker transaction takes it).

RecoveryWorkflow gives each attempt 10 s (start-to-close). With the ledger's 30 s wait, an
attempt stuck behind another process's transaction timed out while its thread kept waiting and
then wrote late; with 5 s it fails with "database is locked" inside its own timeout, leaving
the rest for the transaction itself and a free thread, and STORE_RETRY tries again. Action
and notify steps wait within their own attempts too (LEDGER_WAIT_SECONDS and `record_result` in
activities/idempotency.py)."""


class RecordActivities:
    """`record_incident` and `count_recent_actions`, on the worker's ledger database.

    A database without a known upsert (neither SQLite nor PostgreSQL) stops the worker at start.
    """

    def __init__(self, deps: ActivityDeps) -> None:
        self._engine = with_busy_timeout(deps.ledger.engine, STORE_BUSY_TIMEOUT_MS)
        self._store = IncidentStore(self._engine)

    @activity.defn(name="record_incident")
    async def record_incident(self, record: IncidentRecord) -> IncidentRecorded:
        """Upsert the run and store its new timeline entries; a retry or replay adds nothing twice."""
        return await in_ledger_thread(self._store.record, record, datetime.now(UTC))

    @activity.defn(name="count_recent_actions")
    async def count_recent_actions(self, query: BudgetQuery) -> int:
        """How many of the activities finished for the service within the window up to now."""
        since = datetime.now(UTC) - timedelta(seconds=query.window_seconds)
        return await in_ledger_thread(count_actions, self._engine, query.service,
                                      list(query.activities), since)
