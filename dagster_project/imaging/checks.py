"""Checks of the imaging tables: schema, keys and counts; frames fresh; every frame of a run on disk."""

import warnings
from datetime import UTC, datetime

import dagster as dg
import pyarrow.compute as pc

from dagster_project._checks import table_checks
from dagster_project.imaging.assets import run_qc
from dagster_project.imaging.qc import run_frames
from dagster_project.partitions import ACQUISITION_RUNS
from dagster_project.resources import LakeResource
from lake import chunk_exists

__all__ = ["FRESH_HOURS", "IMAGING_CHECKS", "frames_chunks_exist", "frames_fresh"]

FRESH_HOURS = 24.0  # a farm that acquires daily; older frames mean the microscopes (or their agents) stopped


@dg.asset_check(
    asset="frames",
    description=f"The newest frame was acquired less than {FRESH_HOURS:g} h ago (a warning: the farm may be idle).",
)
def frames_fresh(lake: LakeResource) -> dg.AssetCheckResult:
    newest = pc.max(lake.open().read("frames", columns=["acquired_at"])["acquired_at"]).as_py()
    age_h = (datetime.now(UTC) - newest).total_seconds() / 3600 if newest is not None else None
    return dg.AssetCheckResult(
        passed=age_h is not None and age_h < FRESH_HOURS,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "newest_acquired_at": newest.isoformat() if newest is not None else "no frames",
            "age_hours": dg.MetadataValue.float(age_h if age_h is not None else float("inf")),
            "max_age_hours": FRESH_HOURS,
        },
    )


with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.PreviewWarning)  # a partitioned check is a preview in 1.13

    @dg.asset_check(
        asset=run_qc,
        partitions_def=ACQUISITION_RUNS,
        blocking=True,
        description="Every `frames` row of the run points at an OME-Zarr chunk that exists; blocks `objects`.",
    )
    def frames_chunks_exist(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        run_id = context.partition_key
        frames = run_frames(lake.open(), run_id, ["frame_id", "image_uri", "t", "c", "z"]).to_pylist()
        missing = [f["frame_id"] for f in frames if not chunk_exists(f["image_uri"], f["t"], f["c"], f["z"])]
        return dg.AssetCheckResult(
            passed=bool(frames) and not missing,
            metadata={"run_id": run_id, "frames": len(frames), "missing": len(missing), "missing_frames": missing[:20]},
        )


IMAGING_CHECKS = [
    table_checks("acquisition_runs", "acquisition_runs"),
    table_checks("frames", "frames"),
    frames_fresh,
    table_checks("objects", "objects", min_rows=0),  # a run may have no dividing cell
    frames_chunks_exist,
    # a run without a policy decides nothing; a run on real hardware has no ground truth
    table_checks("decisions", "decisions", min_rows=0),
    table_checks("twin_events", "twin_events", min_rows=0),
]
