"""What a recovery writes into the incident store, and what it asks the store for its budget."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from models.base import MedkitModel, Name
from models.status import RecoveryStatus


class IncidentRecord(MedkitModel):
    """One recovery run's status, timeline included: the `record_incident` activity's argument."""

    run_id: Annotated[str, Field(min_length=1, max_length=100)]
    status: RecoveryStatus


class IncidentRecorded(MedkitModel):
    """What `record_incident` stored: how many timeline entries were new this time."""

    new_entries: int
    timeline_length: int


class BudgetQuery(MedkitModel):
    """Which finished actions of a service to count, over how many seconds back from now."""

    service: Name
    activities: Annotated[list[str], Field(min_length=1)]
    window_seconds: Annotated[float, Field(gt=0)]
