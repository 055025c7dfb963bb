"""Packaging and the command line: `bentoml build` works offline; `cellfarm serve` refuses a bad address in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"


def test_bentoml_build_works_offline(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True", "NO_PROXY": "*"}
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # any download attempt fails at once
    proc = subprocess.run(
        [str(BENTOML), "build", str(ROOT)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [bento] = [p for p in (tmp_path / "bentos" / "cellfarm").iterdir() if p.is_dir()]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:CellFarm"
    assert {r["name"] for r in info["schema"]["routes"]} >= {"predict", "screen", "embed", "decide", "reload"}
    for path in ("serving/service.py", "models/_registry.py", "lake/_lake.py", "acquisition/_mitosis.py"):
        assert (bento / "src" / path).is_file(), path
    assert not (bento / "src" / "tests").exists()
    assert "bentoml==" in (bento / "env" / "python" / "requirements.txt").read_text()


def test_serve_refuses_a_bad_address_in_one_line(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), lake_dir=tmp_path / "lake")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: cannot serve on 127.0.0.1:{port}: Address already in use"]
    proc = run_cli("serve", "--host", "lab-server", lake_dir=tmp_path / "lake")
    assert proc.returncode == 1
    assert "--host must be an IP address" in proc.stderr
