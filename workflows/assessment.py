"""How probe results and the detection decide an incident's severity and category (pure)."""

from __future__ import annotations

from collections import Counter

from models.phases import Severity, worst
from models.policy import AssessmentSpec
from models.probes import ProbeResult

_CATEGORY = {
    "unreachable": "unreachable",
    "process_down": "process_down",
    "bad_status": "unhealthy",
    "body_mismatch": "unhealthy",
    "slow": "latency",
    "resource_limit": "resource_exhaustion",
    "error": "probe_error",
}


def decide_severity(
    results: list[ProbeResult], rules: AssessmentSpec, reported: Severity | None
) -> Severity:
    """The worse of what the probes show and what the detector reported."""
    failed = sum(1 for r in results if not r.healthy)
    if results and failed == len(results):
        observed = rules.all_probes_fail
    elif failed:
        observed = rules.some_probes_fail
    else:
        observed = rules.no_probe_fails
    decided = worst(observed, reported)
    assert decided is not None
    return decided


def decide_category(results: list[ProbeResult], reported: str | None) -> str:
    """The most common failure among the probes, else the detector's category, else 'reported'."""
    failures = Counter(_CATEGORY.get(r.failure or "", "unknown") for r in results if not r.healthy)
    if failures:
        return failures.most_common(1)[0][0]
    return reported or "reported"
