"""The worker writes its workflow modules' bytecode, which the sandbox re-imports for every run."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.bytecode import ensure_workflow_bytecode


def make_workflow_package(root: Path, name: str) -> type:
    """A package with a workflow-like class in one module and a sibling module, imported."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("VALUE = 1\n")
    (package / "flow.py").write_text(f"from {name}.helpers import VALUE\n\n\nclass Flow:\n"
                                     "    value = VALUE\n")
    module = importlib.import_module(f"{name}.flow")
    flow: type = module.Flow
    return flow


@pytest.fixture
def importable(tmp_path: Path) -> Iterator[Path]:
    """tmp_path on sys.path for the test; its modules are forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("bytecode_demo")]:
        del sys.modules[name]


def test_bytecode_is_written_for_the_workflow_module_and_its_package(importable: Path) -> None:
    flow = make_workflow_package(importable, "bytecode_demo_ok")
    compiled = ensure_workflow_bytecode([flow])
    package = importable / "bytecode_demo_ok"
    sources = {package / "__init__.py", package / "helpers.py", package / "flow.py"}
    assert {Path(s) for s in compiled} == sources
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        assert cached.read_bytes()[8:12] == int(source.stat().st_mtime).to_bytes(4, "little")


def test_an_unwritable_install_is_left_as_it_is(importable: Path) -> None:
    flow = make_workflow_package(importable, "bytecode_demo_ro")
    (importable / "bytecode_demo_ro" / "__pycache__").write_text("not a directory")
    assert ensure_workflow_bytecode([flow]) == []
