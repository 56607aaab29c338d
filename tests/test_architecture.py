"""Imports point down the flow: no module of the packages imports the package root ``vladata``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for pkg in ("vladata", "vlatrain") for p in (ROOT / pkg).rglob("*.py")
                 if p != ROOT / "vladata" / "__init__.py")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` gives ``a``), at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_the_package_root(path):
    assert "vladata" not in imported(path), f"{path}: import the submodule, not the package root"


def test_the_hdf5_reader_and_its_layouts_do_not_import_each_other():
    layouts = ROOT / "vladata" / "sources" / "hdf5_layouts.py"
    assert "vladata.sources.hdf5" not in imported(layouts)


def test_recipes_import_no_other_recipe():
    for path in (ROOT / "vlatrain" / "recipes").glob("*.py"):
        assert not {m for m in imported(path) if m.startswith("vlatrain.recipes")}, path
