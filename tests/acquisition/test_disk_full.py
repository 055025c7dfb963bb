"""A disk that fills mid-run: the run fails with a clear error and the lake stays consistent."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import lake
from tests.acquisition.test_agent import assert_rows_point_at_planes
from tests.conftest import run_cli


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: big enough for the lake's empty tables, too small for the run."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_fails_the_run_and_keeps_the_lake_consistent(
    small_disk: Path, tmp_path: Path, mm_config: Path
) -> None:
    lake_dir = small_disk / "lake"
    plan = tmp_path / "plan.yaml"
    # 2,000 noisy 512x512 frames (~1 GiB raw) cannot fit in 24 MiB
    plan.write_text("channels: [DAPI]\ntime_plan: {interval: 0, loops: 2000}\n")
    proc = run_cli("acquire", "--config", str(mm_config), "--plan", str(plan), lake_dir=lake_dir)
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # the writer's failure cancelled the camera's hardware sequence: no more frames (or light) for nothing
    acquired = re.search(r"frames=(\d+)", proc.stdout + proc.stderr)
    assert acquired is not None, proc.stderr
    assert int(acquired.group(1)) < 1000
    target = lake.Lake.open(lake_dir, create=False)
    frames = lake.query(target, "SELECT * FROM frames ORDER BY frame_id").to_pylist()
    assert_rows_point_at_planes(frames)  # every committed row's plane is on disk and reads back
    runs = lake.query(target, "SELECT run_id, status, n_frames FROM acquisition_runs").to_pylist()
    # the run is failed now, or, when even its status could not be written, the next start marks it failed
    assert runs[0]["status"] in {"failed", "running"}
    assert len(frames) < 2000
    # Give the disk more room (as an operator would) and start again: the dead run is marked failed if it was
    # not already, the new run completes, and the failed run's committed frames are still all readable.
    subprocess.run(["mount", "-o", "remount,size=96m", str(small_disk)], check=True)
    short = tmp_path / "short.yaml"
    short.write_text("channels: [DAPI]\ntime_plan: {interval: 0, loops: 3}\n")
    again = run_cli("acquire", "--config", str(mm_config), "--plan", str(short), lake_dir=lake_dir)
    assert again.returncode == 0, again.stderr
    statuses = lake.query(target, "SELECT status FROM acquisition_runs ORDER BY started_at")["status"].to_pylist()
    assert statuses == ["failed", "completed"]
    assert_rows_point_at_planes(lake.query(target, "SELECT * FROM frames").to_pylist())
    assert os.path.ismount(small_disk)
