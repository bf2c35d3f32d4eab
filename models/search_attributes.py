"""medkit's custom search attributes, so recoveries can be listed and filtered in the Temporal UI."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

SERVICE = SearchAttributeKey.for_keyword("MedkitService")
SEVERITY = SearchAttributeKey.for_keyword("MedkitSeverity")
PHASE = SearchAttributeKey.for_keyword("MedkitPhase")
OUTCOME = SearchAttributeKey.for_keyword("MedkitOutcome")

ALL = (SERVICE, SEVERITY, PHASE, OUTCOME)
"""Every key; register them all on a namespace before running recoveries there."""
