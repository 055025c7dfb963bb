"""The import rules of DESIGN.md: storage never imports orchestration, serving or drivers; models and
acquisition never import each other.

Every import counts, wherever it is: module level, inside a function (a lazy import is still a dependency),
under `if TYPE_CHECKING:`, or a constant `importlib.import_module("...")`.

Two exceptions. `serving/_imaging.py` may import acquisition's pure image functions: the classical
`detect_mitoses` (Feedback's stand-in while no mitosis-cnn is in production), `nuclei_above_noise` (the
empty-field test, so served and local policies judge a frame alike) and the `DetectionLike` protocol.
And `models/imaging/__main__.py` is a composition root (a command line, like `cellfarm`) that hands the digital
twin, the simulator the mitosis CNN learns from, to the training code and scores the CNN against the classical
detector. It may import exactly those things from `acquisition`; the library code of `models.imaging` takes its
plates by injection (`PlateFactory`) and returns its own detections, so that it runs without `acquisition`, and
`acquisition` gets a trained detector (and the `remote` policy its client of the served model) from the command
line as a factory.
"""

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
    "models": {"bentoml", "dagster", "acquisition", "serving", "dagster_project", "cellfarm"},
    "acquisition": {"dagster", "bentoml", "models", "serving", "dagster_project", "cellfarm"},
    "serving": {"dagster", "acquisition", "dagster_project", "cellfarm", "pymmcore_plus"},
}
# file -> the banned imports it may make (dotted names; a name also allows what is below it)
ALLOWED = {
    "models/imaging/__main__.py": {
        "acquisition.twin.frozen_plate",
        "acquisition.detect_mitoses",
    },
    # Feedback's stand-in when the registry has no production mitosis-cnn: the same classical detector the
    # `local` policy uses (a numpy function of the image), so a fresh lake's farm still gets answers.
    "serving/_imaging.py": {
        "acquisition.detect_mitoses",
        "acquisition.DetectionLike",
        "acquisition.nuclei_above_noise",
    },
}


def imports(source: str) -> set[str]:
    """Dotted names a module imports: `import a.b` -> a.b, `from a.b import c` -> a.b.c; relative ones skipped."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.add(node.args[0].value)
    return out


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def violations(package: str) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        allowed = ALLOWED.get(rel, set())
        found = [n for n in imports(f.read_text()) if n.split(".")[0] in BANNED[package] and not _allowed(n, allowed)]
        if found:
            bad[rel] = sorted(found)
    return bad


@pytest.mark.parametrize("package", sorted(BANNED))
def test_package_imports_stay_inside_their_layer(package: str) -> None:
    if package == "lake":
        assert (ROOT / "lake").is_dir(), "lake/ must exist"
    assert violations(package) == {}


def test_every_exception_is_still_used() -> None:
    """An exception that no import needs any more is removed, so the rule only ever gets stricter."""
    for rel, allowed in ALLOWED.items():
        used = imports((ROOT / rel).read_text())
        assert allowed <= used, f"{rel} no longer imports {sorted(allowed - used)}: drop it from ALLOWED"


def test_the_scan_sees_lazy_and_indirect_imports() -> None:
    source = (
        "import typing\n"
        "if typing.TYPE_CHECKING:\n    from acquisition.twin import TwinSample\n"
        "def f():\n    import models.imaging\n    from acquisition import Detection\n"
        "def g():\n    importlib.import_module('serving.api')\n    __import__('dagster')\n"
        "from . import sibling\n"
    )
    assert imports(source) == {
        "typing",
        "acquisition.twin.TwinSample",
        "models.imaging",
        "acquisition.Detection",
        "serving.api",
        "dagster",
    }
    assert _allowed("acquisition.twin.TwinSample", {"acquisition.twin"})
    assert not _allowed("acquisition.twinkle", {"acquisition.twin"})
