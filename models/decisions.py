"""Operator decisions sent to a running recovery, and the recovery's verdict on them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from models.base import MedkitModel
from models.phases import DecisionKind, Phase


class OperatorDecision(MedkitModel):
    """Who decided, why and when. The decision's kind is the signal or update it is sent as."""

    operator: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(max_length=2000)] = ""
    at: datetime


class DecisionVerdict(MedkitModel):
    """The recovery's answer to an update: accepted, with the phase it moved the recovery into."""

    decision: DecisionKind
    accepted: bool
    phase: Phase
    message: str
