"""A `cellfarm serve` process in the background, for the demo: started, waited for, stopped with its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

import lake

__all__ = ["BackgroundServer", "background_server"]


@dataclass(frozen=True)
class BackgroundServer:
    url: str
    token: str
    log: Path

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


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
    """Run `cellfarm serve` over `target` until the block ends; ready when `/readyz` says so.

    The server runs in its own process session, so that stopping it stops BentoML's workers too; a server
    that exits or is not ready in `startup_s` is an error with the end of its log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CELLFARM_API_TOKEN": token, "BENTOML_DO_NOT_TRACK": "True"}
    cmd = [sys.executable, "-m", "cellfarm", "--lake", target.root, "serve", "--host", host, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = BackgroundServer(f"http://{host}:{port}", token, log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise lake.LakeError(f"cellfarm serve exited with {proc.returncode}: {server.tail(5)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise lake.LakeError(f"cellfarm serve was not ready within {startup_s:.0f} s (log: {log})")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # BentoML's arbiter stops its workers
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
