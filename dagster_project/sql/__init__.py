"""The sql domain: the DuckDB catalog file for analysts, and nightly table maintenance."""

from __future__ import annotations

import dagster as dg

from dagster_project.sql.assets import duckdb_catalog, table_maintenance
from dagster_project.sql.jobs import table_maintenance_job, table_maintenance_schedule

__all__ = ["defs"]

defs = dg.Definitions(
    assets=[duckdb_catalog, table_maintenance],
    jobs=[table_maintenance_job],
    schedules=[table_maintenance_schedule],
)
