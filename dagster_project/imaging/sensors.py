"""A sensor on `acquisition_runs`: each run that completes gets its partition and its imaging assets.

The cursor is the table's Delta version: nothing to read until an agent commits again. A completed run whose
partition exists already (added earlier, or by hand in the UI) is not requested twice; the run key is the run id.
"""

import dagster as dg
import pyarrow.compute as pc

from dagster_project.imaging.jobs import imaging_run_job
from dagster_project.partitions import ACQUISITION_RUNS
from dagster_project.resources import LakeResource

__all__ = ["completed_runs_sensor"]


@dg.sensor(
    job=imaging_run_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds an `acquisition_runs` partition per completed run and derives its QC, objects and score.",
)
def completed_runs_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
    target = lake.open()
    version = str(target.version("acquisition_runs"))
    if context.cursor == version:
        return dg.SkipReason(f"acquisition_runs unchanged at version {version}")
    runs = target.read("acquisition_runs", columns=["run_id"], filter=pc.field("status") == "completed")
    known = set(ACQUISITION_RUNS.get_partition_keys(dynamic_partitions_store=context.instance))
    new = sorted(set(runs["run_id"].to_pylist()) - known)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_id, partition_key=run_id) for run_id in new],
        dynamic_partitions_requests=[ACQUISITION_RUNS.build_add_request(new)] if new else [],
        cursor=version,
    )
