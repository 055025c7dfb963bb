"""`cellfarm serve` refuses a bad address in one line (`bentoml build` is tested in test_build.py)."""

from __future__ import annotations

import socket
from pathlib import Path


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
