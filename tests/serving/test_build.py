"""`bentoml build` of the repository, for real, into a temporary BENTOML_HOME: what the bento holds.

One build per module (BentoML imports the services to write their schema: ~20 s on 2 cores). `bentoml
containerize cellfarm:<tag>` turns it into an image on a machine with Docker (infra/bentoml/README.md); Docker
is not usable here, so the image itself is not built in a test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"
SECRET = "build-time-secret-" + "q" * 16  # in the build's environment: must end up nowhere in the bento


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "NO_PROXY": "",
        "no_proxy": "",
        "CELLFARM_API_TOKEN": SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = env["https_proxy"] = env["http_proxy"] = "http://127.0.0.1:9"
    proc = subprocess.run(
        [str(BENTOML), "build", str(ROOT)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert SECRET not in proc.stdout + proc.stderr
    [path] = [p for p in (home / "bentos" / "cellfarm").iterdir() if p.is_dir()]
    return path


@pytest.fixture(scope="module")
def info(bento: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((bento / "bento.yaml").read_text())
    return loaded


def test_the_bento_serves_both_services_with_every_route(info: dict[str, Any]) -> None:
    assert info["service"] == "serving.service:CellFarm"
    assert info["name"] == "cellfarm"
    assert info["labels"] == {"project": "cellfarm"}
    assert {r["name"] for r in info["schema"]["routes"]} >= {"predict", "screen", "embed", "decide", "decide_json"}
    assert {r["name"] for r in info["schema"]["routes"]} >= {"reload"}
    [service] = info["services"]
    assert service["name"] == "CellFarm"
    assert service["config"]["workers"] == 1


def test_the_bento_holds_the_packages_it_imports_and_nothing_else(bento: Path) -> None:
    src = bento / "src"
    for package in ("serving", "lake", "models", "acquisition"):
        assert (src / package / "__init__.py").is_file(), package
    for path in ("serving/service.py", "models/_registry.py", "lake/_sql_guard.py", "acquisition/_mitosis.py"):
        assert (src / path).is_file(), path
    tops = {p.name for p in src.iterdir()}
    assert tops <= {
        "serving",
        "lake",
        "models",
        "acquisition",
        "pyproject.toml",
        "constraints.txt",
        "bentofile.yaml",
    }, tops
    assert not list(src.rglob("__pycache__"))
    assert not list(src.rglob("*.h5ad"))  # no data
    assert not list(src.rglob("_delta_log"))  # no lake


def test_the_requirements_are_the_pinned_constraints(bento: Path) -> None:
    """Offline and reproducible: the image installs exactly constraints.txt's pins, bentoml's own included."""
    import bentoml

    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    pins = {ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines() if re.match(r"^\w", ln)}
    assert pins <= {ln.strip() for ln in requirements.splitlines()}
    assert f"bentoml=={bentoml.__version__}" in requirements
    assert re.search(r"^torch==", requirements, re.MULTILINE)


def test_the_bento_declares_its_settings_and_holds_no_secret(bento: Path, info: dict[str, Any]) -> None:
    envs = {e["name"]: e for e in info["envs"]}
    for name in ("CELLFARM_LAKE", "CELLFARM_API_TOKEN"):
        assert envs[name].get("stage") == "runtime", name
        assert not envs[name].get("value"), name  # given at serve time
    for path in bento.rglob("*"):
        if path.is_file() and path.stat().st_size < 4 << 20:
            assert SECRET.encode() not in path.read_bytes(), path.relative_to(bento)
