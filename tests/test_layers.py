"""The layers import only downwards (README, "Architecture"): checked on every module's imports.

    cli/, console/, bench/, scripts/    entry points (the console: the web app)
    flows/, serving/          the pipeline, the service
    tasks/                    one package per stage
    agent/                    the ReAct loop, tools, memory
    engines/, storage/        model runtimes; the SQL store
    evolora/                  settings, paths, logs, tracking: the ground floor
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from evolora.paths import PROJECT_ROOT

LEVEL = {"evolora": 0, "engines": 1, "storage": 1, "agent": 2, "tasks": 3, "flows": 4,
         "serving": 4, "ops": 4, "cli": 5, "console": 5}
# The service reaches the cycle's world only through the registry (and its records).
SERVING_MAY_USE = ("tasks.registry", "tasks.records")
MAX_MODULE_LINES = 500


def project_imports(path: Path) -> list[str]:
    """The project modules `path` imports (module level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        found += [name for name in names if name.split(".")[0] in LEVEL]
    return found


MODULES = sorted(p for package in LEVEL for p in (PROJECT_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_a_module_imports_only_its_own_layer_and_below(path: Path) -> None:
    layer = path.relative_to(PROJECT_ROOT).parts[0]
    wrong = [name for name in project_imports(path)
             if LEVEL[name.split(".")[0]] > LEVEL[layer]
             or (LEVEL[name.split(".")[0]] == LEVEL[layer] and name.split(".")[0] != layer)]
    if layer == "serving":
        wrong += [name for name in project_imports(path)
                  if name.startswith("tasks") and not name.startswith(SERVING_MAY_USE)]
    assert wrong == [], f"{path.name} imports upwards or sideways: {wrong}"


def test_no_python_module_is_over_500_lines() -> None:
    code = [p for p in PROJECT_ROOT.rglob("*.py")
            if p.relative_to(PROJECT_ROOT).parts[0] not in {".venv", "data", "mlruns", "build"}]
    long = {str(p.relative_to(PROJECT_ROOT)): n for p in code
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
