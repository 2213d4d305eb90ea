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
