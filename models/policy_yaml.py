"""Reading a policy file's YAML text into a validated `PolicyFile`, with line numbers in errors.

The file is untrusted input as far as the loader is concerned: whatever it holds, the answer is a
`PolicyFile` or a `PolicyError` listing problems, never a traceback and never a hang. So the
loader bounds what it reads before anything expensive happens: the size of the file
(`MAX_POLICY_BYTES`), how deep it nests (`MAX_DEPTH`), how many aliases it uses (`MAX_ALIASES`)
and how many nodes it holds once aliases are expanded (`MAX_NODES`, which stops "billion
laughs" alias bombs: a few lines that expand to billions of values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from models.policy import PolicyFile
from models.references import Unresolved, UnresolvedReferences, service_names, unresolved

MAX_POLICY_BYTES = 1 << 20
"""A policy file is at most 1 MiB: thousands of services fit, and a runaway file (a log pasted
by mistake, a generator gone wrong) is refused before it is parsed."""

MAX_DEPTH = 64
"""Nesting deeper than this is refused (a real policy nests about ten levels); the YAML composer
is recursive, so without a bound a deep file would end in a RecursionError."""

MAX_ALIASES = 10_000
"""Alias uses (`*name`) in one file: enough to share a ladder or a probe across thousands of
services, while bounding the work of resolving them."""

MAX_NODES = 1_000_000
"""Values in the document once every alias is expanded (about twice what a 1 MiB file can
spell out without aliases). Validation walks the expanded document, so this bounds its work
and stops alias bombs."""


class _Refused(yaml.MarkedYAMLError):
    """The file exceeds one of the loader's bounds, or holds a value Python cannot represent;
    raised while loading, with its position (`problem` is the whole message)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(None, None, message, mark)

@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file: where (field path, line) and why."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '(file)'}: {self.message}"


def _line_order(problem: PolicyProblem) -> int:
    """Where a problem goes in a listing: in file order, the whole file's first."""
    return problem.line if problem.line is not None else 0


class PolicyError(ValueError):
    """A policy file that cannot be used; `problems` lists every issue found, in file order
    (an operator fixes them top to bottom; pydantic reports them in the models' field order)."""

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=_line_order)
        listing = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{listing}")


def _is_tag(node: yaml.Node | None, part: int | str) -> bool:
    """Whether `part` is a union tag pydantic added (the `kind` value), not a key in the file."""
    if not isinstance(node, yaml.MappingNode) or isinstance(part, int):
        return False
    keys = {k.value: v for k, v in node.value}
    kind = keys.get("kind")
    return part not in keys and isinstance(kind, yaml.ScalarNode) and kind.value == part


def _walk(root: yaml.Node | None,
          loc: tuple[int | str, ...]) -> tuple[str, yaml.Node | None, bool]:
    """Follow a pydantic error's `loc` down the YAML node tree: its dotted field path (union
    tags pydantic added left out), the deepest node it reaches, and whether it reaches a node
    for every part (False once it leaves what the file spells out)."""
    node = root
    parts: list[str] = []
    found = True
    for part in loc:
        if found and _is_tag(node, part):
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
        if not found:
            continue
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            found = False
            continue
        node = child
    return "".join(parts), node, found


def _locate(root: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[str, int | None]:
    """The dotted field path and the 1-based line of the deepest YAML node `loc` reaches."""
    path, node, _ = _walk(root, loc)
    return path, node.start_mark.line + 1 if node is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting beyond MAX_DEPTH and aliases beyond MAX_ALIASES as
    it composes, and turning a scalar it cannot convert into an error at the scalar's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self.duplicates: list[PolicyProblem] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, counting aliases and nesting depth first."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        """Compose a mapping, recording a key written twice in `duplicates`: YAML loaders keep
        the last one, so `dry_run: true` followed by `dry_run: false`, or a second `services:`,
        would silently replace the first. The file is refused for it, but the rest is still
        checked as YAML reads it (so the duplicate hides no other problem): the earlier pair is
        dropped from the node, so that problems in the kept value are reported at its own lines.
        Merge keys (`<<: *base`) are not keys of the mapping."""
        node = super().compose_mapping_node(anchor)  # anchor: the name, or None (the stub errs)
        last: dict[tuple[str, str], yaml.Node] = {}
        repeated = False
        for key, _ in node.value:
            if _is_key(key):
                earlier = last.get((key.tag, key.value))
                if earlier is not None:
                    self.duplicates.append(_duplicate(earlier, key))
                    repeated = True
                last[(key.tag, key.value)] = key
        if repeated:  # in one pass, not one per duplicate: a file may hold thousands
            node.value = [(key, value) for key, value in node.value
                          if not _is_key(key) or last[(key.tag, key.value)] is key]
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct a value; a scalar Python cannot represent (an integer of thousands of
        digits, a date like 2024-02-30) becomes a YAML error at its line, not a ValueError."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            reason = str(err).split("; use sys.set_int_max_str_digits()")[0]  # not for a file's author
            raise _Refused(f"cannot read the value {_clip(node)}: {reason}", node.start_mark) from None


def _is_key(node: yaml.Node) -> TypeGuard[yaml.ScalarNode]:
    """Whether a mapping's key node is a key of that mapping, which must not repeat: a scalar,
    and not a merge (`<<: *base`), whose keys may be overridden."""
    return isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:merge"


def _duplicate(first: yaml.Node, second: yaml.Node) -> PolicyProblem:
    """The problem of a key written a second time, at the second's line, naming both lines."""
    first_line, line = first.start_mark.line + 1, second.start_mark.line + 1
    return PolicyProblem("", line, f"duplicate key {_clip(second)} (lines {first_line} and {line}): "
                                   "remove one; YAML would keep only the last")


def _clip(node: yaml.Node) -> str:
    """A scalar's text for a message, shortened: it may be thousands of characters."""
    text = str(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document holds with every alias expanded (shared nodes counted each
    time they are used), without expanding anything: each distinct node is visited once.

    Raises _Refused for an alias inside the node it names (a recursive structure), which could
    not be validated anyway.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _Refused("an alias refers to a node that contains it (a recursive structure)",
                           node.start_mark)
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _decode(data: bytes, source: str) -> str:
    """The file's text; PolicyError for bytes that are not UTF-8, with the line of the first."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PolicyError(source, [PolicyProblem("", line, (
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} cannot be "
            "decoded; save the file as UTF-8"))]) from None


def read_policy_bytes(path: Path) -> bytes:
    """The policy file's bytes, reading no more than one byte beyond MAX_POLICY_BYTES (enough for
    `parse_policy` to refuse a larger file without reading all of it). Raises OSError."""
    with path.open("rb") as handle:
        return handle.read(MAX_POLICY_BYTES + 1)


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any, list[PolicyProblem]]:
    """The document's node tree (for line numbers), its data, within the loader's bounds, and
    its duplicate keys (the data holds the last of each, as YAML reads it)."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # checks every character is printable
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise PolicyError(source, [PolicyProblem("", None, (
                f"the document holds more than {MAX_NODES:,} values once its aliases are "
                "expanded (an alias bomb?); use fewer aliases"))])
        data = loader.construct_document(node) if node is not None else None
        duplicates = loader.duplicates
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        message = str(err.problem) if isinstance(err, _Refused) else _syntax_error(err)
        raise PolicyError(source, [PolicyProblem("", line, message)]) from None
    except RecursionError:  # bounded by MAX_DEPTH; kept so that no input ends in a traceback
        raise PolicyError(source, [PolicyProblem("", None, "nested too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data, duplicates


def _syntax_error(err: yaml.YAMLError) -> str:
    """PyYAML's syntax error in one line, its position given by the problem's line (which the
    problem reports) and column, without the echoed source lines and "<unicode string>"."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return f"not valid YAML: {err}"
    mark = err.problem_mark
    where = f" (column {mark.column + 1})" if mark is not None else ""
    context = ""
    if err.context and err.context_mark is not None:
        start = err.context_mark
        context = f", {err.context} that starts at line {start.line + 1}, column {start.column + 1}"
    return f"not valid YAML{where}: {err.problem}{context}"


def _size(text: str | bytes) -> int:
    """The file's size in bytes (text is measured as UTF-8, which never takes fewer bytes than
    characters, so a text too long in characters is not encoded at all)."""
    if isinstance(text, bytes) or len(text) > MAX_POLICY_BYTES:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_policy(text: str | bytes, source: str = "<policy>") -> PolicyFile:
    """Parse and validate a policy; raise PolicyError naming every problem's field and line.

    `text` is the file's text, or its raw bytes (which must be UTF-8). Files larger than
    MAX_POLICY_BYTES, nested deeper than MAX_DEPTH, or expanding beyond MAX_ALIASES/MAX_NODES
    are refused whole, with "(file)" as the problem's path.
    """
    if _size(text) > MAX_POLICY_BYTES:
        raise PolicyError(source, [PolicyProblem("", None, (
            f"the file is larger than {MAX_POLICY_BYTES:,} bytes (1 MiB), the most a policy may "
            "hold"))])
    if isinstance(text, bytes):
        text = _decode(text, source)
    node, data, duplicates = _compose(text, source)
    policy, problems = _validated(node, data)
    if policy is None or duplicates or problems:
        raise PolicyError(source, duplicates + problems)
    return policy


def _validated(node: yaml.Node | None, data: Any) -> tuple[PolicyFile | None, list[PolicyProblem]]:
    """The policy the data makes (None when it makes none) and every problem found in it."""
    if not isinstance(data, dict):
        return None, [PolicyProblem("", 1, "expected a mapping with 'services'")]
    try:
        coerced = _coerced_scalars(node, data)
        policy = PolicyFile.model_validate(data)
    except ValidationError as err:
        return None, _merged(_error_problems(node, data, err.errors()), coerced)
    except RecursionError:  # bounded by MAX_DEPTH; kept so that no input ends in a traceback
        return None, [PolicyProblem("", None, "nested too deeply")]
    return policy, coerced


_STRICT_TYPES = {"int_type", "bool_type", "float_type"}
"""The errors of pydantic's strict mode kept by `_coerced_scalars`: a number or a boolean
written as another type. Its other strict errors (a string for an enum, say) are lax on purpose."""


def _problem(node: yaml.Node | None, error: Any) -> PolicyProblem:
    """A pydantic error as a problem at its field and line."""
    path, line = _locate(node, tuple(error["loc"]))
    return PolicyProblem(path, line, error["msg"])


_VALUE_ERROR = "Value error, "
"""How pydantic begins the message of a ValueError raised by a validator. A reference problem
begins so too, whichever check found it (the model's own or the loader's on raw data)."""


def _error_problems(node: yaml.Node | None, data: dict[str, Any],
                    errors: list[ErrorDetails]) -> list[PolicyProblem]:
    """Every problem of a failed validation: pydantic's errors with a service's unresolved
    references taken apart (each at its own field), plus the references of every service whose
    own check did not run."""
    problems: list[PolicyProblem] = []
    for error in errors:
        cause = _unresolved_cause(error)
        if cause is not None:
            problems += _references(node, tuple(error["loc"]), cause.problems)
        elif not _in_shared_route_copy(node, data, tuple(error["loc"])):
            problems.append(_problem(node, error))
    return problems + _unchecked_references(node, data, errors)


def _in_shared_route_copy(node: yaml.Node | None, data: dict[str, Any],
                          loc: tuple[int | str, ...]) -> bool:
    """Whether `loc` is inside a service's copy of a shared route (PolicyFile gives every
    service the file's `routes` it does not define itself): an error there is the shared route's
    own, which is reported once at `routes.<name>`, not again in each service."""
    if len(loc) < 4 or loc[0] != "services" or loc[2] != "routes":
        return False
    shared = data.get("routes")
    if not isinstance(shared, dict) or loc[3] not in shared:
        return False
    _, _, written = _walk(node, loc[:4])
    return not written


def _unresolved_cause(error: ErrorDetails) -> UnresolvedReferences | None:
    """The UnresolvedReferences a model's reference check raised, if it is what `error` reports."""
    cause = error.get("ctx", {}).get("error")
    return cause if isinstance(cause, UnresolvedReferences) else None


def _references(node: yaml.Node | None, service: tuple[int | str, ...],
                found: list[Unresolved]) -> list[PolicyProblem]:
    """Unresolved references of the service at `service`, each a problem at its field and line."""
    problems = []
    for problem in found:
        path, line = _locate(node, service + problem.loc)
        problems.append(PolicyProblem(path, line, _VALUE_ERROR + problem.message))
    return problems


def _unchecked_references(node: yaml.Node | None, data: dict[str, Any],
                          errors: list[ErrorDetails]) -> list[PolicyProblem]:
    """The unresolved references of every service with an invalid field, checked on its raw
    data: pydantic runs a model's own checks only once all its fields are valid, so without this
    they would surface only after every other error is fixed. A service whose own check ran is
    left out, its problems are reported already."""
    checked = {error["loc"][:2] for error in errors if _unresolved_cause(error) is not None}
    invalid = {error["loc"][:2] for error in errors
               if len(error["loc"]) > 2 and error["loc"][0] == "services"}
    services = data.get("services")
    problems: list[PolicyProblem] = []
    for index, service in enumerate(services if isinstance(services, list) else []):
        loc = ("services", index)
        if loc in invalid and loc not in checked:
            problems += _references(node, loc, unresolved(service_names(service, data.get("routes"))))
    return problems


def _coerced_scalars(node: yaml.Node | None, data: Any) -> list[PolicyProblem]:
    """Scalars in the file that lax validation would convert to a number or a boolean: `samples:
    true` (read as 1), `max_attempts: '3'`, `dry_run: 'yes'` (dry-run on). Found by validating
    in strict mode and keeping its type errors at values written in the file (not values a
    validator derived, such as a probe's threshold parsed from `unhealthy_when: '> 0.05'`)."""
    try:
        PolicyFile.model_validate(data, strict=True)
    except ValidationError as err:
        return [_problem(node, error) for error in err.errors()
                if error["type"] in _STRICT_TYPES and _written(node, tuple(error["loc"]))]
    return []


def _written(root: yaml.Node | None, loc: tuple[int | str, ...]) -> bool:
    """Whether `loc` reaches a scalar written in the file (a union's tag skipped)."""
    _, node, found = _walk(root, loc)
    return found and isinstance(node, yaml.ScalarNode)


def _merged(problems: list[PolicyProblem], more: list[PolicyProblem]) -> list[PolicyProblem]:
    """`problems`, then those of `more` at a field none of them names."""
    named = {problem.path for problem in problems}
    return problems + [problem for problem in more if problem.path not in named]
