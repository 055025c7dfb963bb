"""The dynamic partitions shared across domains: one per atlas dataset, one per acquisition run."""

from __future__ import annotations

import dagster as dg

__all__ = ["ACQUISITION_RUNS", "ATLAS_DATASETS"]

# One partition per source dataset, keyed by the dataset's name in the lake (`datasets.name`); a sensor on the drop
# folder adds them, and so can the UI.
ATLAS_DATASETS = dg.DynamicPartitionsDefinition(name="atlas_datasets")

# One partition per completed acquisition run (`acquisition_runs.run_id`); fields of view stay rows in Delta.
ACQUISITION_RUNS = dg.DynamicPartitionsDefinition(name="acquisition_runs")
