"""Imports point down the flow (docs/architecture.md).

Between packages: ``vladata`` (raw -> store -> windows) imports none of ``vlaenv``, ``vlatrain``,
``cli``; ``vlaenv`` (simulators) imports neither ``vlatrain`` nor ``cli``; ``vlatrain`` never imports
``cli``. Inside ``vladata``: no module imports the package root ``vladata``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vladata", "vlaenv", "vlatrain", "cli")   # in flow order: each may import only earlier ones
MODULES = sorted(p for pkg in ("vladata", "vlaenv", "vlatrain") for p in (ROOT / pkg).rglob("*.py")
                 if p != ROOT / "vladata" / "__init__.py")
ALL_MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


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


def upstream_imports(path: Path) -> set[str]:
    """The modules ``path`` imports from packages later in the flow than its own."""
    own = PACKAGES.index(path.relative_to(ROOT).parts[0])
    later = PACKAGES[own + 1:]
    return {m for m in imported(path) if m.split(".")[0] in later}


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_flow(path):
    assert not upstream_imports(path), (
        f"{path}: imports {sorted(upstream_imports(path))}, later in the flow {PACKAGES}")


def test_the_flow_rule_catches_an_upstream_import(monkeypatch):
    module = ROOT / "vladata" / "dataset.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "def f():\n    import vlatrain.loop\n")
    assert upstream_imports(module) == {"vlatrain.loop"}


def test_the_hdf5_reader_and_its_layouts_do_not_import_each_other():
    layouts = ROOT / "vladata" / "sources" / "hdf5_layouts.py"
    assert "vladata.sources.hdf5" not in imported(layouts)


def test_recipes_import_no_other_recipe():
    for path in (ROOT / "vlatrain" / "recipes").glob("*.py"):
        assert not {m for m in imported(path) if m.startswith("vlatrain.recipes")}, path
