"""The sql domain's schedule: table maintenance every night."""

import dagster as dg

__all__ = ["table_maintenance_job", "table_maintenance_schedule"]

table_maintenance_job = dg.define_asset_job(
    "table_maintenance_job",
    selection=dg.AssetSelection.assets("table_maintenance"),
    description="Optimize and vacuum every Delta table.",
)

table_maintenance_schedule = dg.ScheduleDefinition(
    name="table_maintenance_daily",
    job=table_maintenance_job,
    cron_schedule="0 3 * * *",  # at night: compaction competes with the agents' commits for the table log
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Compacts and vacuums every Delta table at 03:00.",
)
