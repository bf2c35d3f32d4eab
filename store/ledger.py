"""The action ledger: one row per side effect, keyed by workflow run and activity id.

A retried activity (same workflow id, run id and activity id) finds its row and either
returns the recorded result or resumes from the recorded progress, so a service is
never restarted, scaled or paged twice for one step.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, create_engine


class ActionRecord(SQLModel, table=True):
    """A side effect medkit started, with what it recorded on the way and its final result."""

    __tablename__ = "action_ledger"

    key: str = Field(primary_key=True)
    workflow_id: str = Field(index=True)
    service: str = Field(index=True)
    activity: str
    started_at: datetime
    progress_json: str = "{}"
    result_json: str | None = None
    finished_at: datetime | None = None


class ActionLedger:
    """Idempotency records for side effects, in any SQLAlchemy database (SQLite by default)."""

    def __init__(self, url: str) -> None:
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": 30}
        self._engine: Engine = create_engine(url, connect_args=connect_args)
        self._lock = threading.Lock()
        SQLModel.metadata.create_all(self._engine, tables=[ActionRecord.__table__])  # type: ignore[attr-defined]

    @property
    def engine(self) -> Engine:
        """The database engine, shared with the incident store."""
        return self._engine

    def begin(
        self, key: str, *, workflow_id: str, service: str, activity: str
    ) -> ActionRecord:
        """The record for `key`, created if this is the first attempt."""
        with self._lock, Session(self._engine) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                record = ActionRecord(
                    key=key, workflow_id=workflow_id, service=service, activity=activity,
                    started_at=datetime.now(UTC),
                )
                session.add(record)
                session.commit()
                session.refresh(record)
            session.expunge(record)
            return record

    def progress(self, key: str, **values: Any) -> None:
        """Record how far a side effect got, for a retry to resume from."""
        with self._lock, Session(self._engine) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                raise KeyError(key)
            merged = {**json.loads(record.progress_json), **values}
            record.progress_json = json.dumps(merged)
            session.add(record)
            session.commit()

    def finish(self, key: str, result_json: str) -> None:
        """Record the final result; later attempts with the same key return it."""
        with self._lock, Session(self._engine) as session:
            record = session.get(ActionRecord, key)
            if record is None:
                raise KeyError(key)
            if record.result_json is None:
                record.result_json = result_json
                record.finished_at = datetime.now(UTC)
                session.add(record)
                session.commit()
