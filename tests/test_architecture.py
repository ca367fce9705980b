"""The package map's import rules (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mrfengine"
DOC = PACKAGE.parent / "docs" / "architecture.md"

PHYSICS_AND_KERNELS = {"sequence", "dictionary", "noise", "backend", "matching", "denoise"}
FOUNDATIONS = {"errors", "_atomic", "tissue", "maps"}
DATA = {"io", "masking"}
IMAGE_ANALYSIS = {"registration", "segmentation", "_ants"}
RULES = [
    (IMAGE_ANALYSIS, {"pipeline", "nn", "cli", "report", "phantom", "demo"}),
    (PHYSICS_AND_KERNELS, {"pipeline", "nn", "cli", "report", "phantom", "demo"}),
    ({"metrics"}, {"nn", "pipeline", "cli", "report", "phantom", "demo"}),
    (DATA, {"pipeline", "nn", "cli", "report", "phantom", "demo"}),
]


def _part(path: Path) -> str:
    """The top-level part of mrfengine a file belongs to (``dictionary``, ``noise``, ...)."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imported_parts(path: Path) -> set[str]:
    """Top-level mrfengine parts a module imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1])  # the module's own package, relative to mrfengine
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else None
                if base is None:
                    continue
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    found.add(target[0])
                else:  # "from .. import x": x are top-level parts
                    found.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "mrfengine":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "mrfengine" and len(parts) > 1:
                    found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_rules(path):
    part = _part(path)
    imported = _imported_parts(path) - {part}
    for owners, forbidden in RULES:
        if part in owners:
            bad = imported & forbidden
            assert not bad, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(bad)}"
    if part not in ("cli", "__main__", "demo"):
        assert not imported & {"cli", "demo"}, f"{path.relative_to(PACKAGE)} imports the command line or the demo"
    if part in FOUNDATIONS:
        assert imported <= {"errors"}, f"{path.relative_to(PACKAGE)} (a foundation) imports {sorted(imported)}"


def test_the_map_names_every_part():
    text = DOC.read_text()
    parts = {_part(p) for p in MODULES} - {"__init__", "__main__"}
    parts |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    missing = sorted(p for p in parts if f"`{p}/`" not in text and f"`{p}.py`" not in text)
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_the_walker_sees_relative_absolute_and_nested_imports():
    assert "dictionary" in _imported_parts(PACKAGE / "matching" / "api.py")  # from ..dictionary
    assert {"dictionary", "sequence", "tissue"} <= _imported_parts(PACKAGE / "noise.py")  # from .dictionary
    assert "nn" in _imported_parts(PACKAGE / "cli" / "predict.py")  # imports inside the command's function
