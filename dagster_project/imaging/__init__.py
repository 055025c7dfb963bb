"""The imaging domain: the agents' tables (external), per-run QC, objects and policy score, the run sensor."""

from __future__ import annotations

import dagster as dg

from dagster_project.imaging.assets import AGENT_TABLES, objects, policy_score, run_qc
from dagster_project.imaging.checks import IMAGING_CHECKS
from dagster_project.imaging.jobs import imaging_run_job, twin_acquisition
from dagster_project.imaging.sensors import completed_runs_sensor

__all__ = ["defs"]

defs = dg.Definitions(
    assets=[*AGENT_TABLES, run_qc, objects, policy_score],
    asset_checks=IMAGING_CHECKS,
    jobs=[imaging_run_job, twin_acquisition],
    sensors=[completed_runs_sensor],
)
