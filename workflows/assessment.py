"""How probe results and the detection decide an incident's severity and category (pure).

This runs inside the workflow, so it only reads its arguments: the ordered rules first (the
first whose condition holds decides), then the all/some/no-probe defaults; the detector's own
severity is always a floor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from models.phases import Severity, worst
from models.policy import AssessmentRule, AssessmentSpec, RuleCondition
from models.probes import ProbeResult, ProbeSpec

_CATEGORY = {
    "unreachable": "unreachable",
    "process_down": "process_down",
    "bad_status": "unhealthy",
    "body_mismatch": "unhealthy",
    "check_failed": "unhealthy",
    "slow": "latency",
    "resource_limit": "resource_exhaustion",
    "threshold": "metric_threshold",
    "error": "probe_error",
}


@dataclass(frozen=True)
class Assessment:
    """The verdict of an assessment and, for the timeline, what decided it."""

    severity: Severity
    category: str
    reason: str
    rule: AssessmentRule | None = None


def selected(condition: RuleCondition, results: Sequence[ProbeResult],
             probes: Sequence[ProbeSpec]) -> list[ProbeResult]:
    """The results the condition looks at: its named probes and its group's (all when neither)."""
    if not condition.probes and condition.group is None:
        return list(results)
    names = set(condition.probes)
    if condition.group is not None:
        names.update(p.name for p in probes if p.group == condition.group)
    return [r for r in results if r.probe in names]


def shows(condition: RuleCondition, result: ProbeResult) -> bool:
    """Whether one probe's result meets the condition's failing state and observed comparisons."""
    if condition.failing is not None and (not result.healthy) != condition.failing:
        return False
    for key, comparison in condition.observed.items():
        value = result.observed.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not comparison.holds(float(value)):
            return False
    return True


def holds(condition: RuleCondition, results: Sequence[ProbeResult],
          probes: Sequence[ProbeSpec] = ()) -> bool:
    """Whether enough of the selected probes (any, all, or at least N) meet the condition.

    A condition that selects no result never holds, so `all` is not vacuously true.
    """
    chosen = selected(condition, results, probes)
    if not chosen:
        return False
    matching = sum(1 for r in chosen if shows(condition, r))
    if condition.match == "any":
        return matching >= 1
    if condition.match == "all":
        return matching == len(chosen)
    return matching >= condition.match


def describe(rule: AssessmentRule, index: int) -> str:
    """A short human description of a rule, for the timeline."""
    when = rule.when
    scope = " and ".join(
        part for part in (f"probes {', '.join(when.probes)}" if when.probes else "",
                          f"group {when.group}" if when.group else "") if part
    ) or "all probes"
    tests = []
    if when.failing is not None:
        tests.append("failing" if when.failing else "healthy")
    tests.extend(f"{key} {comparison}" for key, comparison in when.observed.items())
    quantity = when.match if isinstance(when.match, str) else f"at least {when.match}"
    label = rule.name or f"#{index + 1}"
    return f"rule {label} ({quantity} of {scope}: {' and '.join(tests)}) -> {rule.severity.value}"


def _fallback(results: Sequence[ProbeResult], spec: AssessmentSpec) -> tuple[Severity, str]:
    failed = sum(1 for r in results if not r.healthy)
    if results and failed == len(results):
        return spec.all_probes_fail, "all probes failing"
    if failed:
        return spec.some_probes_fail, "some probes failing"
    return spec.no_probe_fails, "no probe failing"


def _failure_category(results: Sequence[ProbeResult], reported: str | None) -> str:
    failures = Counter(_CATEGORY.get(r.failure or "", "unknown") for r in results if not r.healthy)
    if failures:
        return failures.most_common(1)[0][0]
    return reported or "reported"


def assess(results: Sequence[ProbeResult], spec: AssessmentSpec, probes: Sequence[ProbeSpec],
           reported_severity: Severity | None, reported_category: str | None) -> Assessment:
    """Severity and category from the first matching rule, else the defaults; the report is a floor."""
    for index, rule in enumerate(spec.rules):
        if holds(rule.when, results, probes):
            severity = worst(rule.severity, reported_severity)
            assert severity is not None
            category = rule.category or _failure_category(results, reported_category)
            return Assessment(severity, category, f"{describe(rule, index)} matched", rule)
    observed, why = _fallback(results, spec)
    severity = worst(observed, reported_severity)
    assert severity is not None
    reason = f"no rule matched; {why}" if spec.rules else why
    return Assessment(severity, _failure_category(results, reported_category), reason)


def decide_severity(
    results: list[ProbeResult], rules: AssessmentSpec, reported: Severity | None,
    probes: Sequence[ProbeSpec] = (),
) -> Severity:
    """The worse of what the probes show (rules first, then defaults) and what the detector reported."""
    return assess(results, rules, probes, reported, None).severity


def decide_category(results: list[ProbeResult], reported: str | None,
                    rules: AssessmentSpec | None = None, probes: Sequence[ProbeSpec] = ()) -> str:
    """The matching rule's category, else the most common failure, else the detector's, else 'reported'."""
    return assess(results, rules or AssessmentSpec(), probes, None, reported).category
