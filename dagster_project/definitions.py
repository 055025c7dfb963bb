"""The one ``Definitions`` of cellfarm: every domain's definitions merged, with the shared resources."""

from __future__ import annotations

import dagster as dg

from dagster_project import atlas, imaging, serving, sql, training
from dagster_project.resources import RESOURCES

__all__ = ["defs"]

defs = dg.Definitions.merge(
    atlas.defs,
    imaging.defs,
    training.defs,
    serving.defs,
    sql.defs,
    # One process per run, not per step: a step's process would import every domain again (seconds of torch and
    # TileDB per asset check), which dwarfs the thin steps here; heavy work has its own workers (Ray).
    dg.Definitions(resources=RESOURCES, executor=dg.in_process_executor),
)
