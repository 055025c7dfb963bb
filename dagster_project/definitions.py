"""The one ``Definitions`` of cellfarm: every domain's definitions merged, with the shared resources.

The executor is the in-process one unless ``CELLFARM_DAGSTER_EXECUTOR=multiprocess`` is set where the definitions
load (a run worker, a Kubernetes run pod): then each step runs in a process of its own, so a run's independent
steps (an atlas partition's table checks, the imaging QC of several runs) use several cores, and a step that
dies takes only itself down. Either executor takes the usual ``execution: config:`` run config.
"""

from __future__ import annotations

import os

import dagster as dg

from dagster_project import atlas, imaging, serving, sql, training
from dagster_project.resources import RESOURCES

__all__ = ["ENV_EXECUTOR", "EXECUTORS", "defs", "executor"]

ENV_EXECUTOR = "CELLFARM_DAGSTER_EXECUTOR"
# in_process, the default: one process per run, not per step; a step's process imports every domain again (seconds
# of torch and TileDB per asset check), which dwarfs the thin steps here, and the heavy work has its own workers
# (Ray). multiprocess pays that start-up once per step and wins where steps are many and slow.
EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
}


def executor() -> dg.ExecutorDefinition:
    """The executor named by ``CELLFARM_DAGSTER_EXECUTOR`` (default ``in_process``); a name it does not know fails
    the code location's load with one line."""
    name = os.environ.get(ENV_EXECUTOR) or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{ENV_EXECUTOR} must be one of {', '.join(EXECUTORS)}, not {name!r}")
    return EXECUTORS[name]


defs = dg.Definitions.merge(
    atlas.defs,
    imaging.defs,
    training.defs,
    serving.defs,
    sql.defs,
    dg.Definitions(resources=RESOURCES, executor=executor()),
)
