"""Bytecode for workflow modules, which Temporal's sandbox imports afresh for every workflow run."""

from __future__ import annotations

import importlib.util
import py_compile
import sys
from collections.abc import Iterable

import structlog


def ensure_workflow_bytecode(workflow_classes: Iterable[type]) -> list[str]:
    """Write the `.pyc` of each workflow's module and its package siblings, as an import would.

    The sandbox re-executes a workflow's module (and every module it imports that is not
    passed through) for each run it starts. Under PYTHONDONTWRITEBYTECODE, which container
    images commonly set, nothing is cached, so every new recovery compiled its source again
    (about 15 ms of the first workflow task on this machine). A read-only install is left as
    it is. Returns the sources compiled.
    """
    log = structlog.get_logger("medkit.worker")
    packages = {cls.__module__.split(".")[0] for cls in workflow_classes}
    compiled: list[str] = []
    for name, module in sorted(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if name.split(".")[0] not in packages or not source or not source.endswith(".py"):
            continue
        try:
            py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
        except (OSError, py_compile.PyCompileError) as err:
            log.debug("workflow bytecode not written", module=name, error=str(err))
            continue
        compiled.append(source)
    return compiled
