"""Reading a policy file's YAML text into a validated `PolicyFile`, with line numbers in errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from models.policy import PolicyFile


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file: where (field path, line) and why."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '(file)'}: {self.message}"


class PolicyError(ValueError):
    """A policy file that cannot be used; `problems` lists every issue found."""

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{listing}")


def _is_tag(node: yaml.Node | None, part: int | str) -> bool:
    """Whether `part` is a union tag pydantic added (the `kind` value), not a key in the file."""
    if not isinstance(node, yaml.MappingNode) or isinstance(part, int):
        return False
    keys = {k.value: v for k, v in node.value}
    kind = keys.get("kind")
    return part not in keys and isinstance(kind, yaml.ScalarNode) and kind.value == part


def _locate(root: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[str, int | None]:
    """The dotted field path and the 1-based line of the deepest YAML node `loc` reaches."""
    node = root
    line = root.start_mark.line + 1 if root is not None else None
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
        line = node.start_mark.line + 1
    return "".join(parts), line


def parse_policy(text: str, source: str = "<policy>") -> PolicyFile:
    """Parse and validate a policy; raise PolicyError naming every problem's field and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, [PolicyProblem("", line, f"not valid YAML: {err}")]) from err
    if not isinstance(data, dict):
        raise PolicyError(source, [PolicyProblem("", 1, "expected a mapping with 'services'")])
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            path, line = _locate(node, tuple(error["loc"]))
            problems.append(PolicyProblem(path, line, error["msg"]))
        raise PolicyError(source, problems) from err
