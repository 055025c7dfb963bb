"""The import rules of DESIGN.md: storage never imports orchestration, serving or drivers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BANNED = {
    "lake": {
        "dagster",
        "bentoml",
        "ray",
        "pymmcore_plus",
        "acquisition",
        "models",
        "serving",
        "dagster_project",
        "cellfarm",
    },
    "models": {"bentoml", "dagster", "serving", "dagster_project", "cellfarm"},
    "acquisition": {"dagster", "bentoml", "models", "serving", "dagster_project", "cellfarm"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(BANNED))
def test_package_imports_stay_inside_their_layer(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    if package == "lake":
        assert files, "lake/ must exist"
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & BANNED[package]) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}
