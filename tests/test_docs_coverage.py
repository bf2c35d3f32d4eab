"""Every policy-file field is documented: the README or docs/ has a table row naming it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from models.policy import PolicyFile

ROOT = Path(__file__).parent.parent


def models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation refers to (through unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += models_in(arg)
    return found


def policy_models() -> dict[str, type[BaseModel]]:
    """Every model reachable from the policy file's root."""
    seen: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [PolicyFile]
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            todo += models_in(field.annotation)
    return seen


def documented_fields() -> set[str]:
    """Field names that appear as `name` in the first cell of a markdown table row."""
    names: set[str] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            match = re.match(r"^\|\s*`([A-Za-z_][A-Za-z0-9_.\[\]]*)`", line)
            if match:
                names.add(match.group(1).replace("[]", "").split(".")[-1])
    return names


def test_every_policy_field_is_documented() -> None:
    documented = documented_fields()
    missing = sorted(
        f"{name}.{field}"
        for name, model in policy_models().items()
        for field, info in model.model_fields.items()
        if field not in documented and (info.alias or field) not in documented
    )
    assert not missing, f"undocumented policy fields: {missing}"
