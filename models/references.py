"""The names a service's fields refer to (actions, routes, probes, probe groups) that it does not
define, each at its own field.

One implementation over plain data (dicts and lists, shaped as a policy file writes a service)
serves both callers: `ServicePolicy` checks a dump of itself, and the policy loader checks the
raw YAML of a service whose own fields did not validate (pydantic then skips the model's check),
so a file's every problem is listed in one run. Raw data may have any shape: whatever is not
the right shape is skipped (its own field error says what is wrong), and a set of defined names
that cannot be read in full is not checked against, so that no reference is reported unknown
for want of reading what defines it.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from models.phases import Severity
from models.probes import ProbeSpec

Loc = tuple[int | str, ...]
"""A field's position below the service, as pydantic writes an error's `loc`."""

Kind = Literal["action", "route", "probe", "group"]
"""What a reference names."""

_LISTED_AS: dict[Kind, str] = {"action": "defined", "route": "defined", "probe": "defined",
                               "group": "probe groups"}
"""How an unknown name's message introduces the names that are defined."""

_DEFAULT_PROBE_NAMES: dict[str, str] = {
    cls.model_fields["kind"].default: cls.model_fields["name"].default
    for cls in typing.get_args(typing.get_args(ProbeSpec)[0])
}
"""The name a probe of each kind has when the file gives it none."""

_SEVERITIES = tuple(severity.value for severity in Severity)
"""The ladders' keys, in the order their steps are checked."""


@dataclass(frozen=True)
class Unresolved:
    """One problem with a service's references: where (`loc`, below the service) and why."""

    loc: Loc
    message: str


class UnresolvedReferences(ValueError):
    """A service's references that do not resolve, each at its own field (`problems`), for the
    loader to report at their lines; its message joins them, so that a ServicePolicy built in
    code still says everything that is wrong."""

    def __init__(self, problems: list[Unresolved]) -> None:
        self.problems = problems
        super().__init__("; ".join(problem.message for problem in problems))


@dataclass(frozen=True)
class Reference:
    """A name one field uses: what it names, where it is, how messages call that field."""

    kind: Kind
    loc: Loc
    field: str
    name: str


@dataclass(frozen=True)
class ServiceNames:
    """What a service defines and what its fields refer to, as plain names.

    `defined` holds None for a kind whose names cannot all be read (references to it are not
    checked); `probes` holds each probe's name by position, None where it cannot be read.
    """

    defined: Mapping[Kind, frozenset[str] | None]
    probes: list[str | None]
    references: list[Reference]


def unresolved(names: ServiceNames) -> list[Unresolved]:
    """Every probe name used twice and every reference to a name the service does not define."""
    problems = _repeated_probes(names.probes)
    for ref in names.references:
        defined = names.defined[ref.kind]
        if defined is not None and ref.name not in defined:
            listing = sorted(defined) or "none"
            problems.append(Unresolved(ref.loc, f"{ref.field} names unknown {ref.kind} {ref.name!r} "
                                                f"({_LISTED_AS[ref.kind]}: {listing})"))
    return problems


def _repeated_probes(probes: list[str | None]) -> list[Unresolved]:
    """A problem at the name of each probe that repeats an earlier probe's name."""
    first: dict[str, int] = {}
    problems: list[Unresolved] = []
    for index, name in enumerate(probes):
        if name is None:
            continue
        earlier = first.setdefault(name, index)
        if earlier != index:
            problems.append(Unresolved(("probes", index, "name"), "probe names must be unique: "
                                       f"{name!r} is also the name of probes[{earlier}]"))
    return problems


def service_names(service: object, shared_routes: object = None) -> ServiceNames:
    """The names in a service's plain data (as written in a policy file, or a dump of a
    ServicePolicy), with `shared_routes` (the file's top-level `routes`) defined as well."""
    data = _mapping(service)
    probes = _probe_names(data.get("probes", []))
    routes = _keys(data.get("routes", {}))
    shared = _keys({} if shared_routes is None else shared_routes)
    defined: dict[Kind, frozenset[str] | None] = {
        "action": _keys(data.get("actions", {})),
        "route": None if routes is None or shared is None else routes | shared,
        "probe": None if probes is None or None in probes else frozenset(
            name for name in probes if name is not None),
        "group": _probe_groups(data.get("probes", [])),
    }
    references = [*_ladder_steps(data.get("ladders")), *_escalation_routes(data.get("escalation")),
                  *_notify_routes(data.get("actions")), *_rule_references(data.get("assessment")),
                  *_budget_actions(data.get("budgets"))]
    return ServiceNames(defined, probes or [], references)


def _mapping(value: object) -> dict[Any, Any]:
    """The value if it is a mapping, else an empty one (a wrong shape holds no names). YAML and
    pydantic's dumps give dicts; checking for `dict`, not `Mapping`, keeps this cheap, as the
    check runs on every ServicePolicy validated."""
    return value if isinstance(value, dict) else {}


def _items(value: object) -> Iterator[tuple[int, Any]]:
    """The value's items with their positions if it is a list, else none."""
    return enumerate(value) if isinstance(value, list) else iter(())


def _names(loc: Loc, value: object) -> Iterator[tuple[Loc, str]]:
    """The names in a list of names, each at its position (items that are not text skipped)."""
    return (((*loc, index), name) for index, name in _items(value) if isinstance(name, str))


def _keys(value: object) -> frozenset[str] | None:
    """A mapping's keys as the names it defines; None if it is not a mapping of names."""
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        return None
    return frozenset(value)


def _probe_names(probes: object) -> list[str | None] | None:
    """Each probe's name (its kind's default when it has none; None if unreadable); None if
    `probes` is not a list."""
    if not isinstance(probes, list):
        return None
    names: list[str | None] = []
    for probe in probes:
        spec = _mapping(probe)
        kind = spec.get("kind")
        name = spec.get("name", _DEFAULT_PROBE_NAMES.get(kind) if isinstance(kind, str) else None)
        names.append(name if isinstance(name, str) else None)
    return names


def _probe_groups(probes: object) -> frozenset[str] | None:
    """The groups the probes belong to; None if some probe's group cannot be read."""
    if not isinstance(probes, list) or not all(isinstance(probe, dict) for probe in probes):
        return None
    groups = [probe.get("group") for probe in probes]
    if not all(group is None or isinstance(group, str) for group in groups):
        return None
    return frozenset(group for group in groups if group is not None)


def _ladder_steps(ladders: object) -> Iterator[Reference]:
    """The action of every ladder step that names one."""
    for severity in _SEVERITIES:
        for index, rung in _items(_mapping(ladders).get(severity)):
            name = _mapping(rung).get("name")
            field = (f"ladders.{severity} rung {name!r}" if isinstance(name, str)
                     else f"ladders.{severity}[{index}]")
            for step_index, step in _items(_mapping(rung).get("steps")):
                action = _mapping(step).get("action")
                if isinstance(action, str):
                    loc = ("ladders", severity, index, "steps", step_index, "action")
                    yield Reference("action", loc, field, action)


def _escalation_routes(escalation: object) -> Iterator[Reference]:
    """The routes escalations notify."""
    for loc, route in _names(("escalation", "routes"), _mapping(escalation).get("routes")):
        yield Reference("route", loc, "escalation.routes", route)


def _notify_routes(actions: object) -> Iterator[Reference]:
    """The routes each notify action sends to."""
    for name, action in _mapping(actions).items():
        spec = _mapping(action)
        if spec.get("kind") == "notify":
            for loc, route in _names(("actions", name, "routes"), spec.get("routes")):
                yield Reference("route", loc, f"actions.{name}.routes", route)


def _rule_references(assessment: object) -> Iterator[Reference]:
    """The probes and the probe group each assessment rule selects."""
    for index, rule in _items(_mapping(assessment).get("rules")):
        when = _mapping(_mapping(rule).get("when"))
        field = f"assessment.rules[{index}].when"
        loc: Loc = ("assessment", "rules", index, "when")
        for probe_loc, probe in _names((*loc, "probes"), when.get("probes")):
            yield Reference("probe", probe_loc, f"{field}.probes", probe)
        group = when.get("group")
        if isinstance(group, str):
            yield Reference("group", (*loc, "group"), f"{field}.group", group)


def _budget_actions(budgets: object) -> Iterator[Reference]:
    """The actions each budget counts."""
    for index, budget in _items(budgets):
        for loc, action in _names(("budgets", index, "actions"), _mapping(budget).get("actions")):
            yield Reference("action", loc, f"budgets[{index}].actions", action)
