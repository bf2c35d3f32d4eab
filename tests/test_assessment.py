"""Assessment rules: pure evaluation, policy validation, YAML errors, and a real recovery they steer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from activities.deps import ActivityDeps
from models.decisions import OperatorDecision
from models.detection import Detection
from models.phases import DecisionKind, Phase, Severity
from models.policy import AssessmentSpec, ServicePolicy
from models.policy_yaml import PolicyError, parse_policy
from models.probes import ProbeResult
from models.status import RecoveryStatus
from tests.conftest import eventually, free_port, policy_file
from workers.client import send_decision, start_or_join_recovery
from workers.worker import build_worker
from workflows.assessment import assess, decide_category, decide_severity, holds
from workflows.recovery import RecoveryWorkflow

AT = datetime(2025, 1, 1, tzinfo=UTC)

PROBES: list[dict[str, Any]] = [
    {"kind": "http", "name": "web-a", "group": "instances", "url": "http://127.0.0.1:1/healthz"},
    {"kind": "http", "name": "web-b", "group": "instances", "url": "http://127.0.0.1:2/healthz"},
    {"kind": "prometheus", "name": "error-rate", "url": "http://127.0.0.1:9090",
     "query": "sum(rate(errors[1m])) / sum(rate(requests[1m]))", "unhealthy_when": "> 0.01"},
]

RULES: list[dict[str, Any]] = [
    {"name": "instances-down", "when": {"group": "instances", "failing": True, "match": "all"},
     "severity": "critical", "category": "outage"},
    {"name": "error-rate-high", "when": {"probes": ["error-rate"], "observed": {"value": "> 0.05"}},
     "severity": "major"},
]

LADDER = [{"name": "wait", "steps": [{"wait": "1s"}]}]


def policy(probes: list[dict[str, Any]] | None = None, rules: list[dict[str, Any]] | None = None,
           **assessment: Any) -> ServicePolicy:
    """A service policy with the given probes and assessment rules."""
    return ServicePolicy.model_validate({
        "name": "shop", "probes": PROBES if probes is None else probes,
        "ladders": {"minor": LADDER, "major": LADDER, "critical": LADDER},
        "assessment": {"rules": RULES if rules is None else rules, **assessment},
    })


def result(probe: str, healthy: bool, failure: str | None = None, **observed: Any) -> ProbeResult:
    """A probe result as an activity would return it."""
    return ProbeResult.model_validate({
        "probe": probe, "kind": "http", "healthy": healthy, "detail": "-", "at": AT,
        "failure": failure if failure is not None or healthy else "unreachable", "observed": observed,
    })


def verdict(results: list[ProbeResult], reported: Severity | None = None, **kw: Any) -> Any:
    """Assess with the standard policy."""
    spec = policy(**kw)
    return assess(results, spec.assessment, spec.probes, reported, None)


def test_all_instances_down_is_critical() -> None:
    decided = verdict([result("web-a", False), result("web-b", False),
                       result("error-rate", True, value=0.0)])
    assert decided.severity == Severity.CRITICAL
    assert decided.category == "outage"
    assert decided.rule is not None and decided.rule.name == "instances-down"
    assert "instances-down" in decided.reason and "all of group instances" in decided.reason


def test_error_rate_over_five_percent_is_major() -> None:
    decided = verdict([result("web-a", False), result("web-b", True),
                       result("error-rate", False, "threshold", value=0.12)])
    assert decided.severity == Severity.MAJOR
    assert decided.category == "unreachable"  # no rule category: the most common failure (tie: first)
    assert "error-rate-high" in decided.reason


def test_no_rule_matches_falls_back_to_the_defaults() -> None:
    one_down = [result("web-a", False), result("web-b", True), result("error-rate", True, value=0.02)]
    decided = verdict(one_down)
    assert decided.severity == Severity.MINOR
    assert decided.rule is None and decided.reason == "no rule matched; some probes failing"
    everything = [result("web-a", False), result("web-b", False),
                  result("error-rate", False, "threshold", value=0.03)]
    assert verdict(everything, rules=[]).severity == Severity.MAJOR  # all probes fail
    assert verdict(everything, rules=[]).reason == "all probes failing"


def test_first_matching_rule_wins() -> None:
    both = [result("web-a", False), result("web-b", False),
            result("error-rate", False, "threshold", value=0.5)]
    assert verdict(both).severity == Severity.CRITICAL
    assert verdict(both, rules=list(reversed(RULES))).severity == Severity.MAJOR


def test_detector_severity_is_a_floor() -> None:
    calm = [result("web-a", True), result("web-b", True), result("error-rate", True, value=0.2)]
    assert verdict(calm).severity == Severity.MAJOR
    assert verdict(calm, reported=Severity.CRITICAL).severity == Severity.CRITICAL


def test_match_counts_and_healthy_conditions() -> None:
    rules = [{"when": {"group": "instances", "failing": True, "match": 2}, "severity": "critical"},
             {"when": {"probes": ["web-a", "web-b"], "failing": False, "match": "all"},
              "severity": "minor", "category": "metrics_only"}]
    spec = policy(rules=rules)
    half = [result("web-a", False), result("web-b", True)]
    assert not holds(spec.assessment.rules[0].when, half, spec.probes)
    assert holds(spec.assessment.rules[0].when, [result("web-a", False), result("web-b", False)],
                 spec.probes)
    fine = [result("web-a", True), result("web-b", True), result("error-rate", False, "threshold")]
    assert assess(fine, spec.assessment, spec.probes, None, None).category == "metrics_only"


def test_observed_values_must_be_numbers_and_present() -> None:
    when = policy().assessment.rules[1].when
    assert not holds(when, [result("error-rate", False, "threshold")])  # no value observed
    assert not holds(when, [result("error-rate", False, "threshold", value=None)])
    assert not holds(when, [result("error-rate", False, "threshold", value="0.9")])
    assert holds(when, [result("error-rate", False, "threshold", value=1)])


def test_a_condition_selecting_nothing_never_holds() -> None:
    when = policy().assessment.rules[0].when
    assert not holds(when, [result("error-rate", False)], policy().probes)
    assert not holds(when, [result("web-a", False), result("web-b", False)], probes=())


def test_a_condition_without_selection_looks_at_every_probe() -> None:
    spec = policy(rules=[{"when": {"failing": True, "match": "all"}, "severity": "critical"}])
    down = [result("web-a", False), result("web-b", False), result("error-rate", False, "threshold")]
    assert assess(down, spec.assessment, spec.probes, None, None).severity == Severity.CRITICAL


def test_old_signatures_still_work() -> None:
    spec = policy()
    down = [result("web-a", False), result("web-b", False), result("error-rate", True)]
    assert decide_severity(down, AssessmentSpec(), None) == Severity.MINOR
    assert decide_severity(down, spec.assessment, None, spec.probes) == Severity.CRITICAL
    assert decide_category(down, None) == "unreachable"
    assert decide_category([], "cpu") == "cpu"
    assert decide_category(down, None, spec.assessment, spec.probes) == "outage"


@given(
    healthy=st.lists(st.booleans(), min_size=3, max_size=3),
    value=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False)),
    reported=st.sampled_from([None, *Severity]),
)
def test_assessment_never_goes_below_the_report(
    healthy: list[bool], value: float | None, reported: Severity | None
) -> None:
    results = [result(name, ok, value=value) for name, ok in zip(("web-a", "web-b", "error-rate"),
                                                                 healthy, strict=True)]
    decided = verdict(results, reported=reported)
    assert reported is None or decided.severity.rank >= reported.rank


def test_rules_must_name_known_probes_and_groups() -> None:
    with pytest.raises(ValidationError) as caught:
        policy(rules=[{"when": {"probes": ["web-c"], "failing": True}, "severity": "major"},
                      {"when": {"group": "replicas", "failing": True}, "severity": "major"}])
    message = str(caught.value)
    assert "assessment.rules[0].when.probes names unknown probe 'web-c'" in message
    assert "assessment.rules[1].when.group names unknown group 'replicas'" in message
    assert "(probe groups: ['instances'])" in message


def test_a_condition_must_test_something() -> None:
    with pytest.raises(ValidationError, match="needs failing"):
        policy(rules=[{"when": {"group": "instances"}, "severity": "major"}])


POLICY_YAML = """\
version: 1
services:
  - name: shop
    probes:
      - kind: http
        name: web-a
        url: http://127.0.0.1:1/healthz
    ladders:
      minor: [{name: wait, steps: [{wait: 1s}]}]
      major: [{name: wait, steps: [{wait: 1s}]}]
      critical: [{name: wait, steps: [{wait: 1s}]}]
    assessment:
      rules:
        - name: slow
          when:
            probes: [web-a]
            observed:
              latency: "about 5"
          severity: major
"""


def test_yaml_rule_errors_name_field_and_line() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY_YAML, "policy.yaml")
    [problem] = caught.value.problems
    assert problem.path == "services[0].assessment.rules[0].when.observed.latency"
    assert problem.line == 18
    assert "invalid comparison 'about 5'" in problem.message


def test_yaml_rules_parse() -> None:
    text = POLICY_YAML.replace('"about 5"', '">= 5"')
    [service] = parse_policy(text).services
    [rule] = service.assessment.rules
    assert str(rule.when.observed["latency"]) == ">= 5"


async def test_rule_sends_a_real_recovery_down_the_emergency_path(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens here: both instances are really down
    probes = [
        {"kind": "http", "name": "web-a", "group": "instances", "url": f"http://127.0.0.1:{closed}/a",
         "timeout": "1s"},
        {"kind": "http", "name": "web-b", "group": "instances", "url": f"http://127.0.0.1:{closed}/b",
         "timeout": "1s"},
    ]
    spec = ServicePolicy.model_validate({
        "name": "shop", "probes": probes,
        "ladders": {"minor": LADDER, "major": LADDER, "critical": LADDER},
        "assessment": {"all_probes_fail": "major", "rules": [RULES[0]]},
        "validation": {"samples": 1}, "retry": {"max_attempts": 1},
        "escalation": {"max_escalations": 0},
    })
    detection = Detection(detection_id=str(uuid.uuid4()), service="shop", source="cli",
                          summary="shop is down", detected_at=datetime.now(UTC))
    queue = f"assess-{uuid.uuid4().hex[:8]}"
    async with build_worker(ts_env.client, queue, ActivityDeps.create(tmp_path), policy_file(spec)):
        handle = await start_or_join_recovery(ts_env.client, detection, spec, queue)

        async def manual() -> RecoveryStatus | None:
            status: RecoveryStatus = await handle.query(RecoveryWorkflow.status)
            return status if status.phase == Phase.MANUAL_INTERVENTION else None

        await eventually(manual)
        await send_decision(ts_env.client, handle.id, DecisionKind.RESOLVE,
                            OperatorDecision(operator="alice", reason="restarted by hand",
                                             at=datetime.now(UTC)))
        final = await handle.result()
    assert final.severity == Severity.CRITICAL  # the defaults alone would say major
    assert final.category == "outage"
    transitions = [e.to_phase for e in final.timeline if e.kind == "transition"]
    assert transitions[:2] == [Phase.ASSESSING, Phase.EMERGENCY_RECOVERY]
    assert final.phase == Phase.RESOLVED
    assessed = next(e.reason for e in final.timeline if e.kind == "probe")
    assert "2 of 2 probes failing" in assessed and "rule instances-down" in assessed
