"""`cellfarm acquire --twin`: a run queryable in SQL, valid OME-Zarr, and a farm of agents losing no commit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import lake
from tests.acquisition.test_agent import VALIDATOR, assert_rows_point_at_planes
from tests.conftest import run_cli

PLAN = "channels: [GFP, mCherry]\nstage_positions: [{x: 0, y: 0, z: 0}, {x: 700, y: 0, z: 0}]\n"


def test_twin_run_is_queryable_and_its_ome_zarr_is_valid(tmp_path: Path, lake_dir: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + "time_plan: {interval: 0.1, loops: 5}\n")
    proc = run_cli("acquire", "--twin", "--plan", str(plan), lake_dir=lake_dir)
    assert proc.returncode == 0, proc.stderr
    assert "completed twin" in proc.stderr
    out = run_cli(
        "sql",
        "SELECT r.status, r.policy, count(*) AS n, count(DISTINCT f.p) AS positions, min(f.light_power) AS power, "
        "max(f.saturated_frac) AS sat FROM frames f JOIN acquisition_runs r USING (run_id) GROUP BY ALL",
        "-f",
        "json",
        lake_dir=lake_dir,
    )
    (row,) = json.loads(out.stdout)
    assert row == {"status": "completed", "policy": "none", "n": 20, "positions": 2, "power": 50.0, "sat": row["sat"]}
    target = lake.Lake.open(lake_dir)
    frames = lake.query(target, "SELECT * FROM frames").to_pylist()
    assert_rows_point_at_planes(frames)
    assert {f["shape"][0] for f in frames} == {512}
    for uri in {f["image_uri"] for f in frames}:
        check = subprocess.run([str(VALIDATOR), "validate", uri], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        img = lake.OmeZarrImage.open(uri)
        assert img.shape == (5, 2, 1, 512, 512)
        assert img.read_plane(0, 0, 0, level=1).shape == (256, 256)  # the pyramid's second level


def test_farm_of_agents_loses_no_commit(tmp_path: Path, lake_dir: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + "time_plan: {interval: 0, loops: 30}\n")
    proc = run_cli("acquire", "--twin", "--plan", str(plan), "--microscopes", "3", lake_dir=lake_dir)
    assert proc.returncode == 0, proc.stderr
    target = lake.Lake.open(lake_dir)
    runs = lake.query(target, "SELECT microscope_id, status, n_frames, summary FROM acquisition_runs ORDER BY 1")
    assert runs["microscope_id"].to_pylist() == ["twin-0", "twin-1", "twin-2"]
    assert set(runs["status"].to_pylist()) == {"completed"}
    per_run = lake.query(target, "SELECT run_id, count(*) AS n, count(DISTINCT frame_id) AS ids FROM frames GROUP BY 1")
    assert per_run["n"].to_pylist() == [120, 120, 120]
    assert per_run["ids"].to_pylist() == [120, 120, 120]
    # each agent committed many micro-batches into the same tables at once; none was lost
    commits = sum(sum(json.loads(s)["commits"].values()) for s in runs["summary"].to_pylist())
    history = target.table("frames").history()
    appends = sum(1 for h in history if h.get("operation") == "WRITE")
    assert appends == commits
