"""Server processes in the background (`cellfarm serve` for the demo; the tests' and benches' servers too): started,
waited for until ready, stopped with their workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

import lake

__all__ = ["BackgroundServer", "background_server", "running"]


@dataclass(frozen=True)
class BackgroundServer:
    url: str
    token: str
    log: Path

    def tail(self, n: int = 20) -> str:
        return _tail(self.log, n)


@contextlib.contextmanager
def running(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    ready_url: str,
    log: Path,
    startup_s: float = 240.0,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command until the block ends; ready when `ready_url` answers 200.

    It runs in its own process session, so that stopping it (SIGTERM, then SIGKILL after 20 s) stops its
    workers too; a server that exits or is not ready in `startup_s` is an error with the end of its log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise lake.LakeError(f"{cmd[0]} exited with {proc.returncode}: {_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise lake.LakeError(f"{cmd[0]} was not ready within {startup_s:.0f} s: {_tail(log)}")
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)


def _tail(log: Path, n: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def background_server(
    target: lake.Lake,
    *,
    token: str,
    log: Path,
    host: str = "127.0.0.1",
    port: int = 3000,
    startup_s: float = 240.0,
) -> Iterator[BackgroundServer]:
    """Run `cellfarm serve` over `target` until the block ends; ready when `/readyz` says so."""
    env = {**os.environ, "CELLFARM_API_TOKEN": token, "BENTOML_DO_NOT_TRACK": "True"}
    cmd = [sys.executable, "-m", "cellfarm", "--lake", target.root, "serve", "--host", host, "--port", str(port)]
    server = BackgroundServer(f"http://{host}:{port}", token, log)
    with running(cmd, env=env, ready_url=server.url + "/readyz", log=log, startup_s=startup_s):
        yield server


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # BentoML's arbiter stops its workers
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
