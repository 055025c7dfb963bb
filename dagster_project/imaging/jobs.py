"""Imaging jobs: the per-run derivations (what the sensor starts), and a short twin acquisition from the UI."""

from typing import Literal

import dagster as dg

from acquisition import Agent, default_plan, make_policy, open_twin
from acquisition.twin import TwinConfig
from dagster_project.imaging.detectors import choose_detector
from dagster_project.partitions import ACQUISITION_RUNS
from dagster_project.resources import LakeResource

__all__ = ["TwinAcquisitionConfig", "imaging_run_job", "twin_acquisition"]

imaging_run_job = dg.define_asset_job(
    "imaging_run",
    # the agents' tables are checked first: a broken one stops the derivations (blocking checks)
    selection=dg.AssetSelection.assets("run_qc", "objects", "policy_score")
    | dg.AssetSelection.checks_for_assets("acquisition_runs", "frames", "decisions", "twin_events"),
    partitions_def=ACQUISITION_RUNS,
    description="Derive one acquisition run's QC, objects and policy score (one partition per completed run).",
)


class TwinAcquisitionConfig(dg.Config):
    """A short time lapse on the digital-twin microscope (fields 600 µm apart, GFP + mCherry)."""

    loops: int = 10
    interval_s: float = 1.0
    positions: int = 3
    policy: Literal["none", "local"] = "none"
    seed: int = 0
    time_scale: float = 600.0  # sim seconds per wall second: a 30-min mitosis lasts 3 s
    microscope_id: str = "twin-dagster"


@dg.op(description="Run the digital twin through a plan; the completed run lands in the lake for the sensor.")
def acquire_on_twin(context: dg.OpExecutionContext, config: TwinAcquisitionConfig, lake: LakeResource) -> str:
    target = lake.open()
    plan = default_plan(loops=config.loops, interval_s=config.interval_s)
    plan = plan.replace(stage_positions=[(600.0 * i, 0.0, 0.0) for i in range(config.positions)])
    detector = choose_detector(target) if config.policy == "local" else None
    policy = make_policy(config.policy, detector=(lambda: detector) if detector is not None else None)
    scope = open_twin(TwinConfig(seed=config.seed, time_scale=config.time_scale))
    try:
        result = Agent(target, scope, microscope_id=config.microscope_id, policy=policy).run(plan)
    finally:
        scope.close()
    context.log.info(f"run {result.run_id}: {result.status}, {result.n_frames} frames")
    for key in ("acquisition_runs", "frames", "decisions", "twin_events"):
        context.log_event(dg.AssetMaterialization(key, metadata={"run_id": result.run_id, "status": result.status}))
    if result.status != "completed":
        raise dg.Failure(description=f"run {result.run_id} ended {result.status}: {result.error}")
    return result.run_id


@dg.job(description="A short acquisition on the digital twin; `completed_runs_sensor` then derives its assets.")
def twin_acquisition() -> None:
    acquire_on_twin()
