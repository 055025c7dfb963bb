"""The agent on the Micro-Manager demo adapters: frames stream into OME-Zarr and Delta, runs are tracked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import useq

import lake
from acquisition import Agent, RunResult, open_config
from tests.acquisition.conftest import frames_of, versions
from tests.conftest import CELLFARM, run_cli

VALIDATOR = Path(sys.executable).parent / "ome-zarr-models"
PLAN = useq.MDASequence(
    stage_positions=[(0, 0, 0), (100, 200, 0)],
    channels=["DAPI", "FITC"],
    time_plan={"interval": 0.1, "loops": 3},
    z_plan={"range": 2, "step": 1},
)


def assert_rows_point_at_planes(frames: list[dict[str, object]]) -> None:
    images: dict[str, lake.OmeZarrImage] = {}
    for row in frames:
        uri = str(row["image_uri"])
        assert lake.chunk_exists(uri, int(row["t"]), int(row["c"]), int(row["z"]))  # type: ignore[call-overload]
        img = images.setdefault(uri, lake.OmeZarrImage.open(uri))
        plane = img.read_plane(int(row["t"]), int(row["c"]), int(row["z"]))  # type: ignore[call-overload]
        assert float(plane.mean()) == pytest.approx(row["mean"])


def run_mm(target: lake.Lake, config: Path, plan: useq.MDASequence) -> RunResult:
    scope = open_config(config)
    try:
        return Agent(target, scope, microscope_id="mm-0").run(plan)
    finally:
        scope.close()


def test_demo_config_run_streams_into_the_lake(tmp_lake: lake.Lake, mm_config: Path) -> None:
    result = run_mm(tmp_lake, mm_config, PLAN)
    assert result.status == "completed", result.error
    n = sum(1 for _ in PLAN)
    assert result.n_frames == n == 36
    assert result.summary["frames_lost"] == 0
    assert result.summary["backpressure_frames"] == 0
    run = lake.query(tmp_lake, f"SELECT * FROM acquisition_runs WHERE run_id = '{result.run_id}'").to_pylist()[0]
    assert run["status"] == "completed"
    assert run["n_frames"] == n
    assert run["ended_at"] >= run["started_at"]
    assert json.loads(run["plan"])["time_plan"]["loops"] == 3
    frames = frames_of(tmp_lake, result.run_id).to_pylist()
    assert [f["frame_id"] for f in frames] == list(range(n))
    where = {f["p"]: (f["x_um"], f["y_um"]) for f in frames}  # the demo stage reports its actual position
    assert where[0] == pytest.approx((0.0, 0.0), abs=0.01)
    assert where[1] == pytest.approx((100.0, 200.0), abs=0.01)
    assert {f["channel"] for f in frames} == {"DAPI", "FITC"}
    assert sorted({f["t"] for f in frames}) == [0, 1, 2]
    assert sorted({f["z"] for f in frames}) == [0, 1, 2]
    assert all(f["acquired_at"] is not None and f["shape"] == [512, 512] for f in frames)
    assert_rows_point_at_planes(frames)
    for uri in {f["image_uri"] for f in frames}:
        img = lake.OmeZarrImage.open(uri)
        assert img.shape == (3, 2, 3, 512, 512)  # t, c, z, y, x, trimmed to what was written
        check = subprocess.run([str(VALIDATOR), "validate", uri], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (useq.MDASequence(channels=["NoSuchChannel"]), "unknown channel 'NoSuchChannel'"),
        (
            useq.MDASequence(channels=["DAPI"], stage_positions=[{"x": 0, "y": 0, "z": 0}]).model_copy(
                update={"autofocus_plan": useq.AxesBasedAF(autofocus_device_name="NoFocus", axes=("p",))}
            ),
            "unknown autofocus device 'NoFocus'",
        ),
    ],
)
def test_plans_the_microscope_cannot_run_are_refused(
    tmp_lake: lake.Lake, mm_config: Path, plan: useq.MDASequence, message: str
) -> None:
    before = versions(tmp_lake, "acquisition_runs", "frames")
    with pytest.raises(lake.InvalidInputError, match=message):
        run_mm(tmp_lake, mm_config, plan)
    assert versions(tmp_lake, "acquisition_runs", "frames") == before


def test_bad_configs_fail_with_one_line(tmp_path: Path, lake_dir: Path) -> None:
    missing = run_cli("acquire", "--config", str(tmp_path / "none.cfg"), lake_dir=lake_dir)
    assert missing.returncode == 1
    assert "configuration not found" in missing.stderr
    bad = tmp_path / "bad.cfg"
    bad.write_text("Device,Camera,NoSuchLibrary,NoSuchCamera\n")
    proc = run_cli("acquire", "--config", str(bad), lake_dir=lake_dir)
    assert proc.returncode == 1
    assert "cannot load Micro-Manager configuration" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert lake.query(lake.Lake.open(lake_dir), "SELECT count(*) AS n FROM acquisition_runs")["n"][0].as_py() == 0


def test_cli_acquire_with_a_plan_file(tmp_path: Path, lake_dir: Path, mm_config: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("channels: [DAPI, Cy5]\ntime_plan: {interval: 0.05, loops: 4}\n")
    proc = run_cli("acquire", "--config", str(mm_config), "--plan", str(plan), lake_dir=lake_dir)
    assert proc.returncode == 0, proc.stderr
    out = run_cli(
        "sql", "SELECT count(*) AS n, count(DISTINCT channel) AS c FROM frames", "-f", "json", lake_dir=lake_dir
    )
    assert json.loads(out.stdout) == [{"n": 8, "c": 2}]


def _wait_for(cond: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_killed_run_is_marked_failed_by_the_next_start(tmp_path: Path, lake_dir: Path, mm_config: Path) -> None:
    plan = tmp_path / "long.yaml"
    plan.write_text("channels: [DAPI]\ntime_plan: {interval: 0.05, loops: 100000}\n")
    env = {k: v for k, v in os.environ.items() if k != "CELLFARM_LAKE"}
    proc = subprocess.Popen(
        [str(CELLFARM), "--lake", str(lake_dir), "acquire", "--config", str(mm_config), "--plan", str(plan)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: (lake_dir / "delta" / "frames").exists() and lake.Lake.open(lake_dir).read("frames").num_rows >= 20
        )
        # A second agent starting now must not touch the live run.
        other = run_cli("acquire", "--config", str(mm_config), "--plan", str(_short(tmp_path)), lake_dir=lake_dir)
        assert other.returncode == 0, other.stderr
        statuses = lake.query(lake.Lake.open(lake_dir), "SELECT status FROM acquisition_runs")["status"].to_pylist()
        assert sorted(statuses) == ["completed", "running"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    target = lake.Lake.open(lake_dir)
    killed = lake.query(target, "SELECT run_id FROM acquisition_runs WHERE status = 'running'")["run_id"][0].as_py()
    committed = frames_of(target, killed).to_pylist()
    assert len(committed) >= 20
    assert_rows_point_at_planes(committed)
    again = run_cli("acquire", "--config", str(mm_config), "--plan", str(_short(tmp_path)), lake_dir=lake_dir)
    assert again.returncode == 0, again.stderr
    row = lake.query(target, f"SELECT status, n_frames, error FROM acquisition_runs WHERE run_id = '{killed}'")
    assert row.to_pylist() == [{"status": "failed", "n_frames": len(committed), "error": row["error"][0].as_py()}]
    assert "died" in row["error"][0].as_py()
    assert len(frames_of(target, killed)) == len(committed)  # what was committed stays readable


def _short(tmp_path: Path) -> Path:
    plan = tmp_path / "short.yaml"
    plan.write_text("channels: [DAPI]\ntime_plan: {interval: 0, loops: 2}\n")
    return plan


def test_planes_read_back_equal_what_the_camera_gave(tmp_lake: lake.Lake, mm_config: Path) -> None:
    scope = open_config(mm_config)
    seen: dict[int, float] = {}
    scope.core.mda.events.frameReady.connect(lambda img, ev, meta: seen.__setitem__(len(seen), float(np.sum(img))))
    try:
        result = Agent(tmp_lake, scope, microscope_id="mm-0").run(
            useq.MDASequence(channels=["DAPI"], time_plan={"interval": 0, "loops": 5})
        )
    finally:
        scope.close()
    frames = frames_of(tmp_lake, result.run_id).to_pylist()
    img = lake.OmeZarrImage.open(frames[0]["image_uri"])
    assert [float(np.sum(img.read_plane(f["t"], 0, 0))) for f in frames] == [seen[i] for i in range(5)]


def test_autofocus_plan_runs_on_the_demo_config(tmp_lake: lake.Lake, mm_config: Path) -> None:
    plan = useq.MDASequence.model_validate(
        {
            "stage_positions": [(0, 0, 0), (50, 50, 0)],
            "channels": ["DAPI"],
            "autofocus_plan": {"autofocus_device_name": "Z", "autofocus_motor_offset": 0, "axes": ["p"]},
        }
    )
    result = run_mm(tmp_lake, mm_config, plan)
    assert result.status == "completed", result.error
    assert result.n_frames == 2
