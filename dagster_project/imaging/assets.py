"""Imaging assets: the tables the acquisition agents write (external: lineage only), and per-run derivations.

One `acquisition_runs` partition per completed run; fields of view stay rows of `frames`.
"""

import json
from typing import Any

import dagster as dg
import pyarrow.compute as pc

from acquisition import detect_objects, replace_objects
from dagster_project._report import delta_versions, lake_failures, markdown_table, png_markdown
from dagster_project.imaging.detectors import PRODUCTION, choose_detector
from dagster_project.imaging.qc import qc_plot, qc_summary, run_frames, run_row
from dagster_project.partitions import ACQUISITION_RUNS
from dagster_project.resources import LakeResource
from lake import Lake

__all__ = ["AGENT_TABLES", "ObjectsConfig", "objects", "policy_score", "run_qc"]

GROUP = "imaging"
_WRITTEN_BY_AGENTS = (
    "Written by the acquisition agents (`cellfarm acquire`, or the `twin_acquisition` job), not by a Dagster asset."
)

# What the agents write, outside Dagster: declared so that lineage starts at the microscope.
AGENT_TABLES = [
    dg.AssetSpec(
        "acquisition_runs",
        group_name=GROUP,
        kinds={"delta"},
        description=f"`acquisition_runs`: one row per acquisition run (running -> completed | failed | aborted). "
        f"{_WRITTEN_BY_AGENTS}",
    ),
    dg.AssetSpec(
        "frames",
        group_name=GROUP,
        kinds={"delta", "zarr"},
        deps=["acquisition_runs"],
        description="`frames`: one row per image plane, each pointing at its OME-Zarr chunk "
        f"(`<lake>/images/<run>/<position>.ome.zarr`). {_WRITTEN_BY_AGENTS}",
    ),
    dg.AssetSpec(
        "decisions",
        group_name=GROUP,
        kinds={"delta"},
        deps=["frames"],
        description=f"`decisions`: one row per feedback action taken during a run. {_WRITTEN_BY_AGENTS}",
    ),
    dg.AssetSpec(
        "twin_events",
        group_name=GROUP,
        kinds={"delta"},
        deps=["frames"],
        description="`twin_events`: the digital twin's ground truth (divisions, arrests, deaths) of a run's fields. "
        f"{_WRITTEN_BY_AGENTS}",
    ),
]


def _run(target: Lake, run_id: str) -> dict[str, Any]:
    row = run_row(target, run_id)
    if row is None:
        raise dg.Failure(description=f"no acquisition run {run_id!r} in acquisition_runs", allow_retries=False)
    return row


def _run_metadata(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run["run_id"],
        "microscope_id": run["microscope_id"],
        "status": run["status"],
        "policy": run["policy"] or "none",
    }


@dg.asset(
    partitions_def=ACQUISITION_RUNS,
    group_name=GROUP,
    deps=["frames"],
    kinds={"python"},
    description="A run's QC from `frames`: frames per position x channel, intensities, saturation, focus; "
    "focus and mean intensity over time.",
)
def run_qc(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    target = lake.open()
    run = _run(target, context.partition_key)
    frames = run_frames(target, run["run_id"])
    if frames.num_rows == 0:
        raise dg.Failure(description=f"run {run['run_id']} has no frames", allow_retries=False)
    per, overall = qc_summary(frames)
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(run),
            "n_frames": frames.num_rows,
            "positions": len(set(frames["p"].to_pylist())),
            **{k: dg.MetadataValue.float(v) for k, v in overall.items()},
            "per_position_channel": markdown_table(per, max_rows=40),
            "over_time": png_markdown(qc_plot(frames, run["run_id"]), alt="focus and mean over time"),
            **delta_versions(target, "frames"),
        }
    )


class ObjectsConfig(dg.Config):
    channel: str = "GFP"  # the nuclear marker (the twin's H2B-GFP)
    detector: str = PRODUCTION  # "": production mitosis-cnn if registered, else classical; "classical"; a model ref


@dg.asset(
    partitions_def=ACQUISITION_RUNS,
    group_name=GROUP,
    deps=["frames", run_qc],  # after QC, whose blocking check says every frame's chunk is on disk
    kinds={"delta"},
    description="`objects`: dividing cells a mitosis detector finds in the run's nuclear-channel frames (read "
    "back from OME-Zarr). Re-materializing a run replaces its rows; an import's objects (from its masks) are kept.",
)
def objects(context: dg.AssetExecutionContext, config: ObjectsConfig, lake: LakeResource) -> dg.MaterializeResult:
    target = lake.open()
    run = _run(target, context.partition_key)
    if run["microscope_id"] == "import":  # `cellfarm ingest images --masks` wrote its reference segmentation
        kept = target.read("objects", columns=["run_id"], filter=pc.field("run_id") == run["run_id"]).num_rows
        return dg.MaterializeResult(
            metadata={**_run_metadata(run), "status": "kept import objects", "dagster/row_count": kept}
        )
    detector = choose_detector(target, config.detector)
    with lake_failures():
        found = detect_objects(target, run["run_id"], detector=detector, channel=config.channel)
        version = replace_objects(target, run["run_id"], found.rows)
    context.log.info(f"{found.detector}: {found.rows.num_rows} objects in {found.n_frames} {config.channel} frames")
    per_frame = (
        found.rows.group_by("frame_id").aggregate([("object_id", "count"), ("score", "max")]).sort_by("frame_id")
    )
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(run),
            "detector": found.detector,
            "channel": config.channel,
            "frames_searched": found.n_frames,
            "dagster/row_count": dg.MetadataValue.int(found.rows.num_rows),
            "objects_version": dg.MetadataValue.int(version),
            "per_frame": markdown_table(per_frame.rename_columns(["frame_id", "objects", "best_score"])),
        }
    )


@dg.asset(
    partitions_def=ACQUISITION_RUNS,
    group_name=GROUP,
    deps=["twin_events", "decisions"],
    kinds={"python"},
    description="The digital twin's ground-truth score of the run's feedback policy: divisions in the fields "
    "imaged, how many a frame caught, the light dose; a run on real hardware has no ground truth.",
)
def policy_score(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    target = lake.open()
    run = _run(target, context.partition_key)
    summary: dict[str, Any] = json.loads(run["summary"] or "{}")
    twin = summary.get("twin")
    run_filter = pc.field("run_id") == run["run_id"]
    n_decisions = target.read("decisions", columns=["action"], filter=run_filter).num_rows
    common = {**_run_metadata(run), "decisions": n_decisions, "frames": run["n_frames"] or 0}
    if not isinstance(twin, dict):
        why = summary.get("twin_error") or f"run {run['run_id']} is not from the digital twin"
        return dg.MaterializeResult(metadata={**common, "ground_truth": f"no ground truth: {why}"})
    events = target.read("twin_events", columns=["kind", "imaged", "dose"], filter=run_filter)
    divisions = events.filter(pc.equal(events["kind"], "division"))
    imaged = int(pc.sum(divisions["imaged"].cast("int64")).as_py() or 0)
    n_div = divisions.num_rows
    return dg.MaterializeResult(
        metadata={
            **common,
            "ground_truth": "digital twin",
            "divisions": n_div,
            "divisions_imaged": imaged,
            "imaged_fraction": dg.MetadataValue.float(imaged / n_div if n_div else 0.0),
            "frames_during_mitosis": int(twin.get("frames_during_mitosis", 0)),
            "arrests": int(twin.get("arrests", 0)),
            "deaths": int(twin.get("deaths", 0)),
            "mean_dose_at_events": dg.MetadataValue.float(float(pc.mean(events["dose"]).as_py() or 0.0)),
            "mean_dose": dg.MetadataValue.float(float(twin.get("health_mean_dose", 0.0))),
            **delta_versions(target, "twin_events"),
        }
    )
