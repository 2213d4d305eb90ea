"""Layers point down only: core <- store <- engine <- runtime <- services (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what each layer must never import (module prefixes)
FORBIDDEN = {
    "falcon_lite/core": ("sqlalchemy", "alembic", "ray", "fastapi", "falcon_lite.store", "falcon_lite.engine",
                         "falcon_lite.runtime", "services", "os.environ"),
    "falcon_lite/store": ("ray", "fastapi", "falcon_lite.engine", "falcon_lite.runtime", "services"),
    "falcon_lite/engine": ("fastapi", "falcon_lite.runtime", "services"),
    "falcon_lite/runtime": ("fastapi", "services"),
}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down(layer):
    offenders = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_core_never_reads_the_environment():
    for path in sorted((ROOT / "falcon_lite/core").rglob("*.py")):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path


# -- the back doors the store/runtime redesign closed (issue 15) ---------------------------

PACKAGE = ROOT / "falcon_lite"
MAX_LINES = 330  # "no room over ~300 lines" in the store and the runtime


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """Modules `path` imports anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_import_circles_in_the_package():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in runtime_imports(p) if n in modules and n != m} for m, p in modules.items()}
    for m in graph:  # a package's __init__ is not an edge back into its own modules
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_runtime_imports_nothing_from_the_inline_runtime():
    offenders = [str(p.relative_to(ROOT)) for p in (PACKAGE / "runtime").rglob("*.py")
                 if any(n == "falcon_lite.engine.inline" or n.startswith("falcon_lite.engine.inline.")
                        for n in runtime_imports(p))]
    assert not offenders


def private_reaches(path: Path) -> list[str]:
    """``obj._name`` where obj is not self or cls (dunders and ``sys._getframe``-style stdlib aside)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "sys", "os"))):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("layer", ["store", "engine", "runtime"])
def test_no_module_reaches_into_another_objects_private_attributes(layer):
    offenders = [hit for p in sorted((PACKAGE / layer).rglob("*.py")) for hit in private_reaches(p)]
    assert not offenders, "\n".join(offenders)


def test_the_engine_never_checks_an_estimators_name():
    offenders = []
    for path in sorted([*(PACKAGE / "engine").rglob("*.py"), *(PACKAGE / "runtime").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                if "estimator.name" in text:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {text}")
    assert not offenders, "\n".join(offenders)


def test_only_the_dialect_modules_branch_on_the_database():
    allowed = {PACKAGE / "store" / "dialects.py"}
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "services").rglob("*.py")]):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Compare, ast.If, ast.IfExp)) and "dialect.name" in ast.unparse(
                    node.test if isinstance(node, (ast.If, ast.IfExp)) else node):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("layer", ["store", "runtime"])
def test_store_and_runtime_modules_stay_small(layer):
    big = {str(p.relative_to(ROOT)): n for p in (PACKAGE / layer).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big
