"""SIGKILL during a farm's acquisition (`cellfarm acquire --twin --microscopes 2`): one agent process, or the
supervisor that started them (and SIGTERM of the supervisor, an operator's `kill`).

A killed agent: the other agent completes with every frame, the supervisor reports the dead one and marks its run
failed, and the dead run's committed frames all point at planes that read back. A killed (or terminated)
supervisor: its agents abort their runs, every acquired frame committed, instead of running on unsupervised, and
no process is left behind.
(A lone agent killed mid-run, marked failed by the next start: tests/acquisition/test_agent.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

import lake
from acquisition._farm import ORPHANED
from tests.acquisition.test_agent import assert_rows_point_at_planes
from tests.conftest import CELLFARM
from tests.models.conftest import kill_session, session_processes

LOOPS = 200  # per agent: 2 positions x 1 channel x LOOPS frames, long enough for the kill to land midway
PLAN = "channels: [GFP]\nstage_positions: [{x: 0, y: 0, z: 0}, {x: 700, y: 0, z: 0}]\n"


def _wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the farm ended ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _agent_pids(lake_dir: Path) -> dict[str, int]:
    """microscope id -> pid of the agent process holding its run's lock (the lock file holds the pid)."""
    pids = {}
    for lock in (lake_dir / "_state" / "runs").glob("*.lock"):
        if text := lock.read_text().strip():  # empty for a moment while its holder writes it
            pids[lock.stem.rsplit("-", 2)[0]] = int(text)
    return pids


def _committed(lake_dir: Path, microscope_id: str) -> int:
    if not (lake_dir / "delta" / "frames").exists():
        return 0
    frames = lake.Lake.open(lake_dir, create=False).read("frames", columns=["run_id"])
    return int(pc.sum(pc.starts_with(frames["run_id"], f"{microscope_id}-")).as_py() or 0)


@contextlib.contextmanager
def _farm(lake_dir: Path, plan: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`cellfarm acquire --twin --microscopes 2` in its own session; whatever is left of it is killed at the end."""
    env = {k: v for k, v in os.environ.items() if k != "CELLFARM_LAKE"}
    cmd = [str(CELLFARM), "--lake", str(lake_dir), "acquire", "--twin", "--plan", str(plan), "--microscopes", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_session(proc.pid)


def _gone(sid: int, *, timeout: float) -> list[str]:
    """What is still running in session `sid` after `timeout` s (or as soon as nothing is)."""
    deadline = time.monotonic() + timeout
    while (alive := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(p.cmdline())[:120])
    return names


def _runs(target: lake.Lake) -> dict[str, dict[str, object]]:
    rows = lake.query(target, "SELECT microscope_id, run_id, status, n_frames, error, summary FROM acquisition_runs")
    return {r["microscope_id"]: r for r in rows.to_pylist()}


def _frames(target: lake.Lake, run_id: object) -> list[dict[str, object]]:
    return lake.query(target, f"SELECT * FROM frames WHERE run_id = '{run_id}' ORDER BY frame_id").to_pylist()


@pytest.mark.slow
def test_agent_killed_in_a_farm(tmp_path: Path) -> None:
    lake_dir, log = tmp_path / "lake", tmp_path / "farm.log"
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + f"time_plan: {{interval: 0, loops: {LOOPS}}}\n")
    with _farm(lake_dir, plan, log) as proc:
        _wait_for(lambda: _committed(lake_dir, "twin-0") >= 20, "a commit of twin-0", proc, log, 120)
        pids = _agent_pids(lake_dir)
        assert _committed(lake_dir, "twin-1") < 2 * LOOPS, "twin-1 finished before the kill: raise LOOPS"
        os.kill(pids["twin-0"], signal.SIGKILL)
        assert proc.wait(timeout=120) == 1
        output = log.read_text()
        assert _gone(proc.pid, timeout=30) == []  # the dead agent's sibling and the supervisor exited
    assert "twin-0 error: agent process exited with code -9" in output, output[-3000:]
    target = lake.Lake.open(lake_dir)
    runs = _runs(target)
    # the survivor lost nothing; the supervisor marked the dead run failed at once (not at the next start)
    assert (runs["twin-1"]["status"], runs["twin-1"]["n_frames"]) == ("completed", 2 * LOOPS)
    survivor = _frames(target, runs["twin-1"]["run_id"])
    assert [f["frame_id"] for f in survivor] == list(range(2 * LOOPS))
    assert runs["twin-0"]["status"] == "failed"
    assert "died" in str(runs["twin-0"]["error"])
    dead = _frames(target, runs["twin-0"]["run_id"])
    assert len(dead) == runs["twin-0"]["n_frames"] >= 20
    assert [f["frame_id"] for f in dead] == list(range(len(dead)))  # a prefix: nothing committed out of order
    assert_rows_point_at_planes(dead + survivor)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "why"), [(signal.SIGKILL, ORPHANED), (signal.SIGTERM, "terminated")], ids=["SIGKILL", "SIGTERM"]
)
def test_supervisor_killed_stops_its_agents(tmp_path: Path, sig: signal.Signals, why: str) -> None:
    """The supervisor only is signalled (`kill PID`): killed, its agents see it gone; terminated, it tells them."""
    lake_dir, log = tmp_path / "lake", tmp_path / "farm.log"
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + "time_plan: {interval: 0, loops: 5000}\n")  # minutes: runs until stopped
    with _farm(lake_dir, plan, log) as proc:
        for mid in ("twin-0", "twin-1"):
            _wait_for(lambda m=mid: _committed(lake_dir, m) >= 10, f"a commit of {mid}", proc, log, 120)
        agents = _agent_pids(lake_dir)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=120) == (-sig if sig == signal.SIGKILL else 130)
        alive = _gone(proc.pid, timeout=60)
        assert alive == [], f"agents {agents} still running 60 s after their supervisor ended: {alive}"
    target = lake.Lake.open(lake_dir)
    runs = _runs(target)
    assert set(runs) == {"twin-0", "twin-1"}
    for mid, run in runs.items():
        assert (run["status"], run["error"]) == ("aborted", why), (mid, log.read_text()[-3000:])
        frames = _frames(target, run["run_id"])
        summary = json.loads(str(run["summary"]))
        # every frame the camera gave is committed, and every committed row points at its plane
        assert summary["frames_lost"] == 0, summary
        assert len(frames) == run["n_frames"] == summary["frames"] >= 10
        assert [f["frame_id"] for f in frames] == list(range(len(frames)))
        assert_rows_point_at_planes(frames)
