"""Activities over medkit's memory across incidents: record a run, count a service's recent actions.

Both are meant to run as local activities (one short transaction each). The database work
runs in a thread so a slow database never blocks the worker's event loop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.deps import ActivityDeps
from models.incident_record import BudgetQuery, IncidentRecord, IncidentRecorded
from store.incidents import IncidentStore


class RecordActivities:
    """`record_incident` and `count_recent_actions`, on the worker's ledger database.

    A database without a known upsert (neither SQLite nor PostgreSQL) stops the worker at start.
    """

    def __init__(self, deps: ActivityDeps) -> None:
        self._ledger = deps.ledger
        self._store = IncidentStore(deps.ledger.engine)

    @activity.defn(name="record_incident")
    async def record_incident(self, record: IncidentRecord) -> IncidentRecorded:
        """Upsert the run and store its new timeline entries; a retry or replay adds nothing twice."""
        return await asyncio.to_thread(self._store.record, record, datetime.now(UTC))

    @activity.defn(name="count_recent_actions")
    async def count_recent_actions(self, query: BudgetQuery) -> int:
        """How many of the activities finished for the service within the window up to now."""
        since = datetime.now(UTC) - timedelta(seconds=query.window_seconds)
        return await asyncio.to_thread(self._ledger.count_actions, query.service,
                                       list(query.activities), since)
