"""One real `cellfarm serve` process on 127.0.0.1, over a lake with a production perturbation model, shared by
the modules here (its start, ~20 s on 2 cores, is paid once).

The lake starts with no imaging model, so `Feedback` serves the classical fallback; `test_reload` promotes a
mitosis CNN and a second perturbation version while the server runs. Tests compare what the server answers
with the version it names, loaded in process, so they hold whichever version answered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import lake
import models
from cellfarm._server import running
from serving.client import Client, FeedbackClient
from tests.conftest import CELLFARM, GENE_REF, need
from tests.models.conftest import HOLDOUT, free_port, kill_session

TOKEN = "test-token-" + "x" * 20
STARTUP_S = 240


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    lake: lake.Lake
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, **{"token": self.token, **kwargs})

    def feedback(self, **kwargs: Any) -> FeedbackClient:
        return FeedbackClient(self.url, **{"token": self.token, **kwargs})

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        headers = {**self.auth, **dict(kwargs.pop("headers", {}) or {})}
        return httpx.post(self.url + path, headers=headers, timeout=60, **kwargs)

    def wait_for(self, what: str, ok: object, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s; server log:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def serve_lake(papalexi_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    """A copy of the Papalexi lake with `perturbation-mean` v1 in production (no gate: evaluation is slow)."""
    root = tmp_path_factory.mktemp("serve") / "lake"
    shutil.copytree(Path(papalexi_lake.root), root)
    target = lake.Lake.open(root)
    record = models.train(target, "perturbation-mean", "papalexi2021", holdout=HOLDOUT)
    models.set_stage(target, record, "production")
    return target


@contextlib.contextmanager
def run_server(target: lake.Lake, home: Path, **settings: str) -> Iterator[Server]:
    """`cellfarm serve` over `target` on a free port of 127.0.0.1, ready, until the block ends; `settings` are
    more environment variables (`CELLFARM_SERVE_*`). BentoML's home and the server's log live in `home`."""
    log = home / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "CELLFARM_API_TOKEN": TOKEN,
        "CELLFARM_GENE_REFERENCE": str(need(GENE_REF)),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        **settings,
    }
    env.pop("CELLFARM_LAKE", None)
    cmd = [str(CELLFARM), "--lake", target.root, "serve", "--port", str(port)]
    srv = Server(f"http://127.0.0.1:{port}", TOKEN, target, log)
    pid: int | None = None
    try:
        with running(cmd, env=env, ready_url=srv.url + "/readyz", log=log, startup_s=STARTUP_S) as proc:
            pid = proc.pid
            yield srv
    finally:
        if pid is not None:
            kill_session(pid)  # whatever is left of its process session


@pytest.fixture(scope="session")
def server(serve_lake: lake.Lake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        serve_lake,
        tmp_path_factory.mktemp("bentoml"),
        CELLFARM_SERVE_POLL_S="1",
        CELLFARM_SERVE_LOG_FLUSH_S="0.2",
        CELLFARM_SERVE_MAX_INFLIGHT_VC="2",  # small, so that the overload test sheds with a few requests
    ) as srv:
        yield srv
