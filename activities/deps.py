"""What activities share inside one worker process: the ledger, an HTTP client, the state dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from activities.idempotency import LEDGER_WAIT_SECONDS
from store.ledger import ActionLedger, sqlite_url


@dataclass(frozen=True)
class ActivityDeps:
    """Long-lived resources handed to each activity class by the worker."""

    ledger: ActionLedger
    http: httpx.AsyncClient
    state_dir: Path

    @classmethod
    def create(cls, state_dir: Path, database_url: str | None = None) -> ActivityDeps:
        """Resources for a worker keeping its state (and by default its SQLite ledger) in state_dir."""
        state_dir.mkdir(parents=True, exist_ok=True)
        url = database_url or sqlite_url(state_dir / "medkit.db")
        http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
        ledger = ActionLedger(url, wait_ms=int(LEDGER_WAIT_SECONDS * 1000))
        return cls(ledger=ledger, http=http, state_dir=state_dir)
