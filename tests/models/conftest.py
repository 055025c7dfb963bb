"""A writable copy of the session's Papalexi lake, for tests that register models; a real Ray head (`ray start`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import lake


@pytest.fixture(scope="module")
def model_lake(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    root = tmp_path_factory.mktemp("models") / "lake"
    shutil.copytree(Path(papalexi_lake.root), root)
    return lake.Lake.open(root)


HOLDOUT = ["BRD4", "CUL3", "IFNGR1", "JAK2", "MYC"]  # CUL3: no HPA entry, not in the panel


RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of session `sid`. A process started with `start_new_session=True` leads its own session,
    and everything it starts stays in it: the local Ray it brings up (GCS, raylet, agents) and the raylet's
    workers, which move to process groups of their own but keep the session. Zombies are dead already."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(sid: int, *, timeout: float = 30.0) -> int:
    """SIGKILL every process of session `sid` (by pid: no other Ray on the machine is touched) and wait until
    none is left; returns how many were still alive when called."""
    alive = session_processes(sid)
    count = len(alive)
    deadline = time.monotonic() + timeout
    while alive:
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of session {sid} survive SIGKILL: {[p.pid for p in alive]}")
        time.sleep(0.2)
        alive = session_processes(sid)
    return count


@dataclass(frozen=True)
class RayHead:
    """A Ray cluster head started with the Ray CLI: pass `address` to `--ray-address` and `env` to the client
    (the head's own auth token, so no shared ~/.ray/auth_token is read or written). `nodes`: the temp dirs of
    the worker nodes joined to it (`ray start --address`), each its own."""

    address: str
    temp_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    nodes: tuple[Path, ...] = ()

    def driver_logs(self) -> list[Path]:
        """The logs of the drivers (jobs) that ran on this cluster."""
        return sorted({log.resolve() for log in self.temp_dir.glob("session_*/logs/python-core-driver-*.log")})


def _ray_start(args: list[str], env: dict[str, str], sessions: list[int]) -> None:
    """`ray start ARGS` in a session of its own, recorded in `sessions` (to kill it by) before it can fail."""
    proc = subprocess.Popen(
        [str(RAY), "start", *args],
        start_new_session=True,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sessions.append(proc.pid)
    out, _ = proc.communicate(timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")


@contextlib.contextmanager
def ray_cluster(*, head_cpus: int = 2, node_cpus: tuple[int, ...] = ()) -> Iterator[RayHead]:
    """`ray start --head`, then one `ray start --address` per entry of `node_cpus`, all on 127.0.0.1, each with its
    own temp dir and ports, the head's token and no dashboard; stopped at the end by killing their sessions'
    processes (never `ray stop`, which would stop every Ray of the user)."""
    temp = Path(tempfile.mkdtemp(prefix="cfray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    sessions: list[int] = []
    nodes: list[Path] = []
    try:
        head = [
            "--head", "--num-cpus", str(head_cpus), "--port", str(port), "--node-ip-address", "127.0.0.1",
            "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        ]  # fmt: skip
        _ray_start(head, env, sessions)
        for cpus in node_cpus:
            nodes.append(Path(tempfile.mkdtemp(prefix="cfnode-", dir="/tmp")))
            node = [
                "--address", address, "--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1",
                "--disable-usage-stats", "--temp-dir", str(nodes[-1]),
                "--dashboard-agent-listen-port", str(free_port()),
            ]  # fmt: skip
            _ray_start(node, env, sessions)
        yield RayHead(address=address, temp_dir=temp, env=env, nodes=tuple(nodes))
    finally:
        for sid in reversed(sessions):  # the worker nodes first, then the head they report to
            kill_session(sid)
        for folder in (temp, *nodes):
            shutil.rmtree(folder, ignore_errors=True)
