"""The imaging domain on a real digital-twin run: the `twin_acquisition` job acquires it, `completed_runs_sensor`
adds its partition once, and its QC, objects and policy score materialize with their checks; a missing chunk
blocks `objects`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
import useq

import acquisition
import lake
from dagster_project import imaging
from dagster_project.imaging.sensors import completed_runs_sensor
from dagster_project.resources import LakeResource
from tests.acquisition.conftest import MM_CONFIG
from tests.conftest import need
from tests.dagster_project.conftest import bind, checks_of, metadata_of

POSITIONS, LOOPS = 2, 4  # two channels: 16 frames, 8 of them GFP


@dataclass
class Farm:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    lake: lake.Lake
    run_id: str

    def acquire(self, *, loops: int = LOOPS, positions: int = POSITIONS) -> str:
        # 3600 sim s per wall s: a 4-loop run over 2 s sees many divisions (about 5 per field per sim hour)
        config = {"loops": loops, "interval_s": 0.5, "positions": positions, "time_scale": 3600.0, "seed": 3}
        result = self.defs.resolve_job_def("twin_acquisition").execute_in_process(
            instance=self.instance, run_config={"ops": {"acquire_on_twin": {"config": config}}}
        )
        run_id = result.output_for_node("acquire_on_twin")
        assert isinstance(run_id, str)
        return run_id

    def derive(self, run_id: str, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        self.instance.add_dynamic_partitions("acquisition_runs", [run_id])
        return self.defs.resolve_job_def("imaging_run").execute_in_process(
            instance=self.instance,
            partition_key=run_id,
            run_config={"ops": {"objects": {"config": {"detector": "classical"}}}},
            raise_on_error=raise_on_error,
        )


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Farm:
    lake_dir = tmp_path_factory.mktemp("imaging") / "lake"
    f = Farm(bind(imaging.defs, lake_dir=lake_dir), dg.DagsterInstance.ephemeral(), lake.Lake.open(lake_dir), "")
    f.run_id = f.acquire()
    return f


def _sense(farm: Farm, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    ctx = dg.build_sensor_context(
        instance=farm.instance, cursor=cursor, resources={"lake": LakeResource(root=farm.lake.root)}
    )
    out = completed_runs_sensor(ctx)
    assert isinstance(out, dg.SensorResult | dg.SkipReason)
    return out


def test_twin_job_leaves_a_completed_run_and_reports_the_agents_tables(farm: Farm) -> None:
    run = farm.lake.read("acquisition_runs", filter=pc.field("run_id") == farm.run_id).to_pylist()[0]
    assert run["status"] == "completed"
    assert run["n_frames"] == POSITIONS * LOOPS * 2
    frames = farm.instance.get_latest_materialization_event(dg.AssetKey("frames"))
    assert frames is not None
    assert frames.asset_materialization is not None
    assert frames.asset_materialization.metadata["run_id"].value == farm.run_id


def test_sensor_adds_each_completed_run_once(farm: Farm) -> None:
    farm.lake.merge(  # another agent's run, still going: not derived until it completes
        "acquisition_runs", [{"run_id": "live-0", "microscope_id": "live", "status": "running"}], mode="upsert"
    )
    first = _sense(farm, None)
    assert isinstance(first, dg.SensorResult)
    assert [r.partition_key for r in first.run_requests or []] == [farm.run_id]
    assert [r.run_key for r in first.run_requests or []] == [farm.run_id]
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests or []] == [[farm.run_id]]  # type: ignore[union-attr]
    for req in first.dynamic_partitions_requests or []:  # what the daemon does with them
        assert isinstance(req, dg.AddDynamicPartitionsRequest)
        farm.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))

    assert isinstance(_sense(farm, first.cursor), dg.SkipReason)  # the table did not change

    farm.lake.merge(
        "acquisition_runs", [{"run_id": "live-0", "microscope_id": "live", "status": "failed"}], mode="upsert"
    )
    later = _sense(farm, first.cursor)  # the table changed, but no new completed run
    assert isinstance(later, dg.SensorResult)
    assert not later.run_requests
    assert later.cursor != first.cursor


def test_imaging_assets_materialize_for_the_run(farm: Farm) -> None:
    result = farm.derive(farm.run_id)
    assert result.success
    checks = checks_of(result)
    assert {"frames_keys_unique", "frames_fresh", "frames_chunks_exist", "objects_keys_unique"} <= checks.keys()
    assert all(checks.values()), checks

    qc = metadata_of(result, "run_qc")
    assert qc["n_frames"] == POSITIONS * LOOPS * 2
    assert qc["positions"] == POSITIONS
    assert "| 1 | mCherry | 4 |" in qc["per_position_channel"]
    assert qc["over_time"].startswith("![focus and mean over time](data:image/png;base64,")
    assert 0 < qc["focus_p10"] <= qc["focus_p50"] <= qc["focus_p90"]

    objects = metadata_of(result, "objects")
    assert objects["frames_searched"] == POSITIONS * LOOPS
    assert objects["detector"] == "mitosis-detector:classical-1"
    rows = farm.lake.read("objects", filter=pc.field("run_id") == farm.run_id)
    assert rows.num_rows == objects["dagster/row_count"] > 0
    assert set(rows["class"].to_pylist()) == {"mitosis"}

    score = metadata_of(result, "policy_score")
    assert score["ground_truth"] == "digital twin"
    assert score["policy"] == "none"
    assert score["decisions"] == 0
    assert score["divisions"] > 0
    assert 0 <= score["divisions_imaged"] <= score["divisions"]
    assert score["mean_dose"] > 0

    # a second materialization of the partition replaces the run's objects, it does not add to them
    again = farm.derive(farm.run_id)
    assert metadata_of(again, "objects")["dagster/row_count"] == rows.num_rows
    assert farm.lake.read("objects", filter=pc.field("run_id") == farm.run_id).num_rows == rows.num_rows
    assert checks_of(again)["objects_keys_unique"]


def test_a_missing_chunk_fails_its_check_and_blocks_objects(farm: Farm) -> None:
    run_id = farm.acquire(loops=2, positions=1)
    frame = farm.lake.read("frames", filter=pc.field("run_id") == run_id).to_pylist()[0]
    chunk = Path(frame["image_uri"]) / "0" / "c" / str(frame["t"]) / str(frame["c"]) / str(frame["z"]) / "0" / "0"
    assert lake.chunk_exists(frame["image_uri"], frame["t"], frame["c"], frame["z"])
    chunk.unlink()  # a disk that lost a file

    result = farm.derive(run_id, raise_on_error=False)
    assert checks_of(result)["frames_chunks_exist"] is False
    evaluation = next(c for c in result.get_asset_check_evaluations() if c.check_name == "frames_chunks_exist")
    assert evaluation.metadata["missing_frames"].value == [frame["frame_id"]]
    materialized = {e.materialization.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "run_qc" in materialized
    assert "objects" not in materialized  # the blocking check stopped it
    assert farm.lake.read("objects", filter=pc.field("run_id") == run_id).num_rows == 0


def test_a_run_on_real_hardware_has_no_ground_truth(farm: Farm) -> None:
    scope = acquisition.open_config(need(MM_CONFIG))  # Micro-Manager's demo adapters: no simulated truth
    try:
        run = acquisition.Agent(farm.lake, scope, microscope_id="mm-0").run(
            useq.MDASequence(channels=["DAPI"], time_plan={"interval": 0, "loops": 2})
        )
    finally:
        scope.close()
    assert run.status == "completed"
    result = farm.derive(run.run_id)
    score = metadata_of(result, "policy_score")
    assert score["ground_truth"] == f"no ground truth: run {run.run_id} is not from the digital twin"
    assert "divisions" not in score
    objects = metadata_of(result, "objects")
    assert (objects["frames_searched"], objects["dagster/row_count"]) == (0, 0)  # no GFP channel on that scope
