"""The atlas domain: source datasets (h5ad) into SOMA + `cells` + `genes`, the HPA table, drop-folder sensors."""

from __future__ import annotations

import dagster as dg

from dagster_project.atlas.assets import atlas_dataset, hpa_subcellular
from dagster_project.atlas.checks import ATLAS_CHECKS
from dagster_project.atlas.jobs import atlas_ingest_job, hpa_ingest_job
from dagster_project.atlas.sensors import atlas_drop_sensor, hpa_drop_sensor

__all__ = ["defs"]

defs = dg.Definitions(
    assets=[atlas_dataset, hpa_subcellular],
    asset_checks=ATLAS_CHECKS,
    jobs=[atlas_ingest_job, hpa_ingest_job],
    sensors=[atlas_drop_sensor, hpa_drop_sensor],
)
