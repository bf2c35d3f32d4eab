"""The policy loader refuses hostile or broken files with a PolicyError, never a traceback or a hang.

Every case goes through the real loader (`parse_policy`, or `load_policy` as the CLI reads a file):
alias bombs, files too large, too deep or not UTF-8, numbers too large for a duration, negative
durations, values YAML reads but Python cannot hold; and thousands of services still validate
with exact duplicate reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.common import load_policy
from models.policy import PolicyFile, ServicePolicy
from models.policy_yaml import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_POLICY_BYTES,
    PolicyError,
    PolicyProblem,
    parse_policy,
)

RUNG = "{name: w, steps: [{wait: 1s}]}"
SERVICE = ("{name: %s, probes: [{kind: tcp, name: p, port: 1}], "
           f"ladders: {{minor: [{RUNG}], major: [{RUNG}], critical: [{RUNG}]}}%s}}")


def policy(*services: str, extra: str = "") -> str:
    """A policy file of the given services (flow mappings), plus top-level `extra` lines."""
    return "version: 1\nservices:\n" + "".join(f"  - {s}\n" for s in services) + extra


def service(name: str = "web", fields: str = "") -> str:
    """One valid service as a flow mapping, with extra `fields` (", key: value" pairs)."""
    return SERVICE % (name, fields)


def problems(text: str | bytes) -> list[PolicyProblem]:
    """The problems the loader reports; fails the test if it accepts the file."""
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    return caught.value.problems


def test_the_fixtures_are_a_valid_policy() -> None:
    assert [s.name for s in parse_policy(policy(service("a"), service("b"))).services] == ["a", "b"]


@pytest.mark.timeout(60)
def test_an_alias_bomb_shaped_like_a_valid_policy_is_refused_before_validation() -> None:
    """60 services x 3 ladders x 60 rungs x 60 steps: a few hundred aliases that expand to
    648,000 steps, which a loader without a bound accepts as a valid policy (and each recovery of
    it would carry a snapshot of 216,000 steps). Refused from its size once expanded, computed
    without expanding it."""
    steps = ", ".join(["*step"] * 59)
    rungs = ", ".join(["*rung"] * 59)
    text = ("version: 1\n"
            "services:\n"
            "  - &svc {name: web-0, probes: [{kind: tcp, name: p, port: 1}],\n"
            f"     ladders: {{minor: &rungs [&rung {{name: r, steps: [&step {{wait: 1s}}, {steps}]}},"
            f" {rungs}], major: *rungs, critical: *rungs}}}}\n"
            + "".join(f"  - {{<<: *svc, name: web-{i}}}\n" for i in range(1, 60)))
    [problem] = problems(text)
    assert problem.path == ""
    assert str(problem).startswith("(file): the document holds more than 1,000,000 values once its "
                                   "aliases are expanded")


def test_a_classic_billion_laughs_is_refused() -> None:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    previous = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
        previous = name
    [problem] = problems(text + "services: *i\n")
    assert "more than 1,000,000 values once its aliases are expanded" in problem.message
    assert MAX_NODES == 1_000_000


def test_aliases_are_capped_but_sharing_a_ladder_across_services_is_fine() -> None:
    ladders = f"{{minor: [{RUNG}], major: [{RUNG}], critical: [{RUNG}]}}"
    first = f"{{name: s0, probes: [{{kind: tcp, name: p, port: 1}}], ladders: &ladders {ladders}}}"
    shared = [f"{{name: s{i}, probes: [{{kind: tcp, name: p, port: 1}}], ladders: *ladders}}"
              for i in range(1, 200)]
    assert len(parse_policy(policy(first, *shared)).services) == 200

    too_many = "x: &x 1\nservices: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    [problem] = problems(too_many)
    assert (problem.path, problem.line) == ("", 2)
    assert problem.message == "more than 10000 aliases (*name)"


def test_an_alias_inside_the_node_it_names_is_refused() -> None:
    [problem] = problems("version: 1\nservices: &loop [*loop]\n")
    assert (problem.path, problem.line) == ("", 2)
    assert "an alias refers to a node that contains it" in problem.message


def test_a_file_larger_than_the_cap_is_refused_whole() -> None:
    valid = policy(service())
    padding = "#" * (MAX_POLICY_BYTES - len(valid) + 1) + "\n"
    [problem] = problems(valid + padding)
    assert str(problem) == ("(file): the file is larger than 1,048,576 bytes (1 MiB), the most a "
                            "policy may hold")
    assert problems((valid + padding).encode()) == [problem]
    # Measured in bytes: 'é' is two bytes in UTF-8.
    assert problems(valid + "#" + "é" * ((MAX_POLICY_BYTES - len(valid)) // 2 + 1) + "\n") == [problem]
    assert parse_policy(valid + "#" * (MAX_POLICY_BYTES - len(valid) - 1) + "\n").services


def test_deep_nesting_is_refused_at_its_line_not_with_a_recursion_error() -> None:
    [problem] = problems("version: 1\nservices:\n  - " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert (problem.path, problem.line) == ("", 3)
    assert problem.message == f"nested more than {MAX_DEPTH} levels deep"
    nested = "services:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 200))
    assert problems(nested)[0].message == "nested more than 64 levels deep"


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    valid = policy(service()).encode()
    path.write_bytes(valid + b"# caf\xe9 in Latin-1\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    [problem] = caught.value.problems
    assert str(problem) == (f"line 4: (file): not UTF-8 text: byte 0xe9 at offset {len(valid) + 5} "
                            "cannot be decoded; save the file as UTF-8")
    assert caught.value.source == str(path)
    path.write_bytes(policy(service("caf\u00e9")).encode())  # UTF-8, but not a valid name
    with pytest.raises(PolicyError, match=r"services\[0\]\.name: String should match pattern"):
        load_policy(path)


def test_load_policy_reads_no_more_than_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(policy(service()).encode() + b"#" * (4 * MAX_POLICY_BYTES) + b"\n")
    with pytest.raises(PolicyError, match=r"larger than 1,048,576 bytes"):
        load_policy(path)
    path.write_text(policy(service()))
    assert load_policy(path).services[0].name == "web"


@pytest.mark.parametrize(("fields", "path", "message"), [
    (", validation: {interval: 1.0e+400}", "services[0].validation.interval",
     "a duration must be at most 3650d (10 years)"),
    (", validation: {interval: 1e400}", "services[0].validation.interval",
     "a duration must be at most 3650d (10 years)"),
    (", validation: {interval: .inf}", "services[0].validation.interval",
     "a duration must be at most 3650d (10 years)"),
    (", validation: {interval: .nan}", "services[0].validation.interval",
     "a duration must be a number of seconds, not NaN"),
    (", escalation: {after: 1" + "0" * 400 + "}", "services[0].escalation.after",
     "a duration must be at most 3650d (10 years)"),
    (", escalation: {after: 99999999999d}", "services[0].escalation.after",
     "a duration must be at most 3650d (10 years)"),
    (", retry: {max_backoff: 3651d}", "services[0].retry.max_backoff",
     "a duration must be at most 3650d (10 years)"),
    (", validation: {interval: -5s}", "services[0].validation.interval",
     "a duration must not be negative"),
    (", validation: {interval: -5}", "services[0].validation.interval",
     "a duration must not be negative"),
    (", retry: {initial_backoff: -0.5}", "services[0].retry.initial_backoff",
     "a duration must not be negative"),
    (", escalation: {after: -1m}", "services[0].escalation.after", "a duration must not be negative"),
    (", health_poll: {cooldown: -1h}", "services[0].health_poll.cooldown",
     "a duration must not be negative"),
    (", actions: {r: {kind: command, argv: [x], timeout: -30}}", "services[0].actions.r.timeout",
     "a duration must not be negative"),
])
def test_durations_too_large_or_negative_name_their_field(fields: str, path: str, message: str) -> None:
    [problem] = problems(policy(service(fields=fields)))
    assert (problem.path, problem.line) == (path, 3)
    assert problem.message == f"Value error, {message}"


def test_negative_step_and_probe_durations_name_their_field() -> None:
    text = policy(service().replace("wait: 1s", "wait: -1s").replace("port: 1}", "port: 1, timeout: -2}"))
    paths = sorted(p.path for p in problems(text))
    assert paths == ["services[0].ladders.critical[0].steps[0].wait",
                     "services[0].ladders.major[0].steps[0].wait",
                     "services[0].ladders.minor[0].steps[0].wait",
                     "services[0].probes[0].timeout"]


def test_durations_in_range_still_parse() -> None:
    text = policy(service(fields=", validation: {interval: 0.25}, escalation: {after: 3650d}, "
                                 "retry: {initial_backoff: 1e1s}"))
    [svc] = parse_policy(text).services
    assert svc.validation.interval.total_seconds() == 0.25
    assert svc.escalation.after.days == 3650
    assert svc.retry.initial_backoff.total_seconds() == 10


@pytest.mark.parametrize(("value", "message"), [
    ("9" * 5000, "Exceeds the limit (4300 digits)"),
    ("2024-02-30", "day is out of range for month"),
])
def test_values_python_cannot_hold_are_refused_at_their_line(value: str, message: str) -> None:
    [problem] = problems(policy(service(), service("db", f", description: {value}")))
    assert (problem.path, problem.line) == ("", 4)
    assert problem.message.startswith("cannot read the value ")
    assert message in problem.message


def many(names: list[str]) -> str:
    """A policy of these services, all but the first merging the first one's fields (`<<:`), so
    the file stays small and quick to parse."""
    first = "&base " + service(names[0])
    return policy(first, *(f"{{<<: *base, name: {name}}}" for name in names[1:]))


def test_thousands_of_services_validate_and_report_exact_duplicates() -> None:
    unique = [f"svc-{i:04d}" for i in range(5000)]
    services = parse_policy(many(unique)).services
    assert [s.name for s in services] == unique
    assert services[4999].ladders.minor[0].name == "w"

    repeated = unique[:4990] + [f"svc-{i:04d}" for i in (7, 7, 42, 4989, 0, 1, 2, 3, 4, 5)]
    [problem] = problems(many(repeated))
    assert problem.message == ("Value error, service names must be unique; repeated: "
                               "['svc-0000', 'svc-0001', 'svc-0002', 'svc-0003', 'svc-0004', "
                               "'svc-0005', 'svc-0007', 'svc-0042', 'svc-4989']")


def test_thousands_of_anomaly_series_report_exact_duplicates() -> None:
    series = [f"    - {{name: s{i}, service: web}}\n" for i in range(5000)]
    series += ["    - {name: s17, service: web}\n", "    - {name: s4999, service: web}\n"]
    [problem] = problems(policy(service(), extra="anomaly:\n  series:\n" + "".join(series)))
    assert problem.path == "anomaly"
    assert problem.message == ("Value error, anomaly series names must be unique; repeated: "
                               "['s17', 's4999']")


def test_fleet_limits_in_a_service_are_refused_at_their_line_not_dropped() -> None:
    """A service's own `fleet` used to validate and then be replaced by the file's: a
    blast-radius cap the operator wrote, silently gone."""
    [problem] = problems(policy(service("web", ", fleet: {max_services: 1}")))
    assert (problem.path, problem.line) == ("services[0].fleet", 3)
    assert "set them in the top-level `fleet` section, not in a service" in problem.message


def test_a_fleet_size_in_the_file_is_refused_at_its_line_not_replaced() -> None:
    [problem] = problems(policy(service(), extra="fleet:\n  max_percent: 50\n  fleet_size: 100\n"))
    assert (problem.path, problem.line) == ("fleet.fleet_size", 6)
    assert problem.message.startswith("Value error, fleet_size is set by medkit from the number "
                                      "of services in the file")


def test_top_level_fleet_limits_reach_every_service_with_the_fleet_size() -> None:
    text = policy(service("a"), service("b"), extra="fleet: {max_services: 1, max_percent: 50}\n")
    services = parse_policy(text).services
    assert [(s.fleet.max_services, s.fleet.max_percent, s.fleet.fleet_size)
            for s in services] == [(1, 50.0, 2), (1, 50.0, 2)]


def test_a_loaded_file_dumped_and_read_again_is_the_same_file() -> None:
    """The fleet limits a file stamps on its services (and its fleet_size) are not settings
    written in it: reading back a dump gives the same file, so tools and tests can round-trip."""
    loaded = parse_policy(policy(service("a"), service("b"), extra="fleet: {max_services: 1}\n"))
    again = PolicyFile.model_validate(loaded.model_dump(mode="json", by_alias=True))
    assert again == loaded
    changed = loaded.model_dump(mode="json", by_alias=True)
    changed["services"][0]["fleet"]["max_services"] = 5  # not what the file stamps: refused
    with pytest.raises(ValueError, match="set them in the top-level `fleet` section"):
        PolicyFile.model_validate(changed)


@pytest.mark.parametrize(("text", "key", "lines", "line"), [
    (policy(service("web", ", retry: {max_attempts: 1}, retry: {max_attempts: 5}")),
     "retry", (3, 3), 3),
    (policy(service()) + "dry_run: true\ndry_run: false\n", "dry_run", (4, 5), 5),
    (policy(service("a")) + "services:\n  - " + service("b") + "\n", "services", (2, 4), 4),
])
def test_a_key_written_twice_is_refused_naming_both_lines(
        text: str, key: str, lines: tuple[int, int], line: int) -> None:
    """YAML keeps the last of two equal keys: a second `services:` dropped every service above
    it, and `dry_run: false` after `dry_run: true` turned a dry run into a real one."""
    [problem] = problems(text)
    assert (problem.path, problem.line) == ("", line)
    assert problem.message == (f"duplicate key {key!r} (lines {lines[0]} and {lines[1]}): remove "
                               "one; YAML would keep only the last")


def test_merge_keys_may_override_what_they_merge() -> None:
    """`<<: *base` then `name: ...` is not a duplicate: the explicit key wins by design."""
    text = policy("&base " + service("a"), "{<<: *base, name: b, description: x}")
    assert [s.name for s in parse_policy(text).services] == ["a", "b"]


@pytest.mark.parametrize(("fields", "path", "message"), [
    (", validation: {samples: true}", "services[0].validation.samples",
     "Input should be a valid integer"),
    (", retry: {max_attempts: '3'}", "services[0].retry.max_attempts",
     "Input should be a valid integer"),
    (", dry_run: 'yes'", "services[0].dry_run", "Input should be a valid boolean"),
    (", health_poll: {enabled: 'false'}", "services[0].health_poll.enabled",
     "Input should be a valid boolean"),
])
def test_a_value_of_the_wrong_type_is_refused_not_coerced(
        fields: str, path: str, message: str) -> None:
    """Lax validation read `samples: true` as 1 and `dry_run: 'yes'` as a dry run."""
    [problem] = problems(policy(service("web", fields)))
    assert (problem.path, problem.line, problem.message) == (path, 3, message)


def test_numbers_durations_and_derived_values_of_the_documented_forms_still_parse() -> None:
    """Strictness is for values as written: an int where a float goes, YAML's own booleans,
    durations as strings, and values a validator derives (a probe's threshold from
    `unhealthy_when`) are all fine."""
    probe = ("{kind: prometheus, name: errors, url: 'http://prometheus:9090', query: 'up', "
             "unhealthy_when: '> 0.05'}")
    text = policy(service("web", ", dry_run: yes, validation: {samples: 2, interval: 250ms}, "
                                 "retry: {max_attempts: 3, initial_backoff: 10}"),
                  extra="fleet: {max_percent: 25}\n")
    [svc] = parse_policy(text).services
    assert (svc.dry_run, svc.validation.samples, svc.retry.max_attempts) == (True, 2, 3)
    assert svc.fleet.max_percent == 25.0
    [with_probe] = parse_policy(policy(service("db")).replace(
        "probes: [{kind: tcp, name: p, port: 1}]", f"probes: [{probe}]")).services
    assert with_probe.probes[0].name == "errors"


def test_a_syntax_error_is_one_line_with_one_line_number() -> None:
    [problem] = problems("services:\n  - name: [a\n")
    assert problem.line == 3
    assert problem.message == ("not valid YAML (column 1): expected ',' or ']', but got "
                               "'<stream end>', while parsing a flow sequence that starts at "
                               "line 2, column 11")


def test_an_integer_too_long_does_not_mention_python_internals() -> None:
    [problem] = problems(policy(service(), service("db", f", description: {'9' * 5000}")))
    assert "sys.set_int_max_str_digits" not in problem.message
    assert problem.message.endswith("value has 5000 digits")


def test_references_and_plain_field_errors_are_listed_together_by_line() -> None:
    """A ladder naming an unknown action and an unknown escalation route were reported only
    once every plain field error (here a negative duration) was fixed, as one message at the
    service's `name:` line; and the problems were listed out of line order."""
    text = ("version: 1\n"
            "routes:\n"
            "  ops: {kind: webhook, url_env: OPS_URL}\n"
            "services:\n"
            "  - name: web\n"
            "    escalation:\n"
            "      routes: [ops, pager]\n"
            "    validation:\n"
            "      interval: -5s\n"
            "    probes:\n"
            "      - {kind: tcp, name: p, port: 1}\n"
            "    actions:\n"
            "      restart: {kind: command, argv: [x]}\n"
            "    ladders:\n"
            "      minor:\n"
            "        - name: first\n"
            "          steps:\n"
            "            - action: restart\n"
            "        - name: second\n"
            "          steps:\n"
            "            - action: reboot\n"
            "      major: [{name: w, steps: [{wait: 1s}]}]\n"
            "      critical: [{name: w, steps: [{wait: 1s}]}]\n")
    assert [str(problem) for problem in problems(text)] == [
        "line 7: services[0].escalation.routes[1]: Value error, escalation.routes names unknown "
        "route 'pager' (defined: ['ops'])",
        "line 9: services[0].validation.interval: Value error, a duration must not be negative",
        "line 21: services[0].ladders.minor[1].steps[0].action: Value error, ladders.minor rung "
        "'second' names unknown action 'reboot' (defined: ['restart'])",
    ]


def every_reference_wrong(max_attempts: str) -> str:
    """A service whose every kind of reference has one that does not resolve, with
    `retry.max_attempts` (line 25) written as given."""
    return ("version: 1\n"
            "routes:\n"
            "  ops: {kind: webhook, url_env: OPS_URL}\n"
            "services:\n"
            "  - name: web\n"
            "    probes:\n"
            "      - {kind: tcp, name: a, port: 1, group: replicas}\n"
            "      - {kind: tcp, name: b, port: 2}\n"
            "      - {kind: tcp, name: a, port: 3}\n"
            "    actions:\n"
            "      restart: {kind: command, argv: [x]}\n"
            "      page: {kind: notify, routes: [ops, pager]}\n"
            "    ladders:\n"
            "      minor: [{name: r, steps: [{action: restart}, {action: reboot}]}]\n"
            "      major: [{name: w, steps: [{wait: 1s}]}]\n"
            "      critical: [{name: w, steps: [{wait: 1s}]}]\n"
            "    assessment:\n"
            "      rules:\n"
            "        - when: {probes: [a, c], failing: true}\n"
            "          severity: major\n"
            "        - when: {group: instances, failing: true}\n"
            "          severity: major\n"
            "    budgets:\n"
            "      - {actions: [restart, reboot], max_actions: 1}\n"
            f"    retry: {{max_attempts: {max_attempts}}}\n")


EVERY_REFERENCE_PROBLEM = [
    ("services[0].probes[2].name", 9,
     "Value error, probe names must be unique: 'a' is also the name of probes[0]"),
    ("services[0].actions.page.routes[1]", 12,
     "Value error, actions.page.routes names unknown route 'pager' (defined: ['ops'])"),
    ("services[0].ladders.minor[0].steps[1].action", 14,
     "Value error, ladders.minor rung 'r' names unknown action 'reboot' "
     "(defined: ['page', 'restart'])"),
    ("services[0].assessment.rules[0].when.probes[1]", 19,
     "Value error, assessment.rules[0].when.probes names unknown probe 'c' (defined: ['a', 'b'])"),
    ("services[0].assessment.rules[1].when.group", 21,
     "Value error, assessment.rules[1].when.group names unknown group 'instances' "
     "(probe groups: ['replicas'])"),
    ("services[0].budgets[0].actions[1]", 24,
     "Value error, budgets[0].actions names unknown action 'reboot' (defined: ['page', 'restart'])"),
]


def test_every_unresolved_reference_is_a_problem_at_its_own_field() -> None:
    """The service's fields are valid, so its own reference check found these: each at the
    step, route, probe or action that is wrong, not joined at the service's `name:` line."""
    found = [(p.path, p.line, p.message) for p in problems(every_reference_wrong("3"))]
    assert found == EVERY_REFERENCE_PROBLEM


def test_references_are_checked_even_when_another_field_of_the_service_is_invalid() -> None:
    """An invalid field keeps pydantic from running the service's reference check; the loader
    checks the raw data instead, finding the same problems once each (not once per path)."""
    found = [(p.path, p.line, p.message) for p in problems(every_reference_wrong("0"))]
    wrong_field = ("services[0].retry.max_attempts", 25, "Input should be greater than or equal to 1")
    assert found == [*EVERY_REFERENCE_PROBLEM, wrong_field]


def test_checking_the_raw_data_invents_no_reference_problem() -> None:
    """Names that resolve are not reported when the service has another error: a shared route,
    a probe's default name (its kind), an action whose own definition is invalid."""
    text = ("version: 1\n"
            "routes:\n"
            "  ops: {kind: webhook, url_env: OPS_URL}\n"
            "services:\n"
            "  - name: web\n"
            "    probes: [{kind: tcp, port: 1}]\n"
            "    actions:\n"
            "      restart: {kind: command, argv: [x], timeout: -30}\n"
            "    ladders:\n"
            "      minor: [{name: r, steps: [{action: restart}]}]\n"
            "      major: [{name: w, steps: [{wait: 1s}]}]\n"
            "      critical: [{name: w, steps: [{wait: 1s}]}]\n"
            "    assessment: {rules: [{when: {probes: [tcp], failing: true}, severity: major}]}\n"
            "    escalation: {routes: [ops]}\n")
    [problem] = problems(text)
    assert (problem.path, problem.line) == ("services[0].actions.restart.timeout", 8)


def test_a_shared_route_is_reported_once_and_a_services_own_route_at_its_line() -> None:
    """An invalid shared route is one problem at `routes.<name>`, not one more per service that
    got a copy of it; a service's own route of that name (which replaces the shared one there)
    is still checked and reported at its own line."""
    text = policy(service("a", ", escalation: {routes: [ops]}"),
                  service("b", ", routes: {ops: {kind: slack, webhook_url_env: 'x y'}}"),
                  service("c"),
                  extra="routes:\n  ops: {kind: webhook, url_env: OPS_URL, timeout: -1s}\n")
    found = [(p.path, p.line) for p in problems(text)]
    assert found == [("services[1].routes.ops.webhook_url_env", 4), ("routes.ops.timeout", 7)]


SHAPES = st.recursive(st.none() | st.booleans() | st.integers() | st.sampled_from(["a", "r", "ops"]),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["a", "r", "name", "action", "routes",
                                                         "steps", "kind", "when", "probes",
                                                         "group", "actions", "notify"]),
                                        inner, max_size=3),
                      max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["probes", "actions", "ladders", "escalation",
                                               "routes", "assessment", "budgets"]), SHAPES))
def test_the_raw_reference_check_survives_any_shape(fields: dict[str, object]) -> None:
    """Whatever shape the referring fields have, the loader answers with problems, never an
    exception of the raw check."""
    text = yaml.safe_dump({"services": [{"name": "web", "retry": {"max_attempts": 0}, **fields}]})
    assert problems(text)


def test_a_service_built_in_code_still_refuses_unresolved_references() -> None:
    """Not from a file, so no line to report at: one ValueError naming every problem."""
    ladder = [{"name": "r", "steps": [{"action": "reboot"}]}]
    with pytest.raises(ValueError, match=r"ladders\.critical rung 'r' names unknown action 'reboot' "
                                         r"\(defined: none\); escalation\.routes names unknown "
                                         r"route 'pager' \(defined: none\)"):
        ServicePolicy.model_validate({
            "name": "web", "probes": [{"kind": "tcp", "port": 1}], "escalation": {"routes": ["pager"]},
            "ladders": {"minor": ladder, "major": ladder, "critical": ladder}})


def test_a_duplicate_key_does_not_hide_the_other_problems() -> None:
    """The refused duplicate used to be the only problem reported. The rest of the file is
    checked as YAML reads it (the last of the two keys), at the lines of that last one."""
    text = ("version: 1\n"
            "services:\n"
            "  - name: web\n"
            "    probes: [{kind: tcp, name: p, port: 1}]\n"
            "    retry: {max_attempts: 1}\n"
            "    retry: {max_attempts: 0}\n"
            "    ladders:\n"
            "      minor: [{name: r, steps: [{action: reboot}]}]\n"
            "      major: [{name: w, steps: [{wait: 1s}]}]\n"
            "      critical: [{name: w, steps: [{wait: -1s}]}]\n")
    assert [str(problem) for problem in problems(text)] == [
        "line 6: (file): duplicate key 'retry' (lines 5 and 6): remove one; YAML would keep only "
        "the last",
        "line 6: services[0].retry.max_attempts: Input should be greater than or equal to 1",
        "line 8: services[0].ladders.minor[0].steps[0].action: Value error, ladders.minor rung 'r' "
        "names unknown action 'reboot' (defined: none)",
        "line 10: services[0].ladders.critical[0].steps[0].wait: Value error, a duration must not "
        "be negative",
    ]


def test_a_key_written_three_times_is_reported_twice_and_the_last_is_checked() -> None:
    text = policy(service()) + "dry_run: true\ndry_run: false\ndry_run: 'no'\n"
    assert [(p.line, p.path, p.message) for p in problems(text)] == [
        (5, "", "duplicate key 'dry_run' (lines 4 and 5): remove one; YAML would keep only the last"),
        (6, "", "duplicate key 'dry_run' (lines 5 and 6): remove one; YAML would keep only the last"),
        (6, "dry_run", "Input should be a valid boolean"),
    ]
