"""The recovery state machine's phases, severities, outcomes and operator decisions."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a recovery is in the state machine; the values are the public contract."""

    DETECTED = "Detected"
    ASSESSING = "Assessing"
    AUTO_REMEDIATION = "AutoRemediation"
    GRADUAL_RECOVERY = "GradualRecovery"
    EMERGENCY_RECOVERY = "EmergencyRecovery"
    AWAITING_APPROVAL = "AwaitingApproval"
    VALIDATING = "Validating"
    RETRY_RECOVERY = "RetryRecovery"
    MANUAL_INTERVENTION = "ManualIntervention"
    RECOVERED = "Recovered"
    RESOLVED = "Resolved"
    ABORTED = "Aborted"
    DISMISSED = "Dismissed"

    @property
    def terminal(self) -> bool:
        """True once the recovery has ended and accepts no further decisions."""
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.RECOVERED, Phase.RESOLVED, Phase.ABORTED, Phase.DISMISSED})


class Severity(StrEnum):
    """How bad an incident is; decides which remediation ladder runs."""

    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Ordering so that the worse of two severities can be taken with max()."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.MINOR: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}


def worst(*severities: Severity | None) -> Severity | None:
    """The most severe of the given severities, ignoring None."""
    present = [s for s in severities if s is not None]
    return max(present, key=lambda s: s.rank) if present else None


class Outcome(StrEnum):
    """How a recovery ended: it is the terminal phase's name. `Dismissed`: the service was
    healthy again before medkit acted, so it ended without acting."""

    RECOVERED = "Recovered"
    RESOLVED = "Resolved"
    ABORTED = "Aborted"
    DISMISSED = "Dismissed"


class DecisionKind(StrEnum):
    """What an operator can tell a running recovery."""

    APPROVE = "approve"
    ABORT = "abort"
    RESOLVE = "resolve"
    RETRY = "retry"


PHASE_FOR_SEVERITY = {
    Severity.MINOR: Phase.AUTO_REMEDIATION,
    Severity.MAJOR: Phase.GRADUAL_RECOVERY,
    Severity.CRITICAL: Phase.EMERGENCY_RECOVERY,
}
"""The remediation phase that runs the first rung of each severity's ladder."""
