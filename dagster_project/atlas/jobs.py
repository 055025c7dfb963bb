"""The atlas jobs the drop sensors start (and a data engineer can launch from the UI)."""

from __future__ import annotations

import dagster as dg

from dagster_project.partitions import ATLAS_DATASETS

__all__ = ["atlas_ingest_job", "hpa_ingest_job"]

# the multi-asset's three keys, with their checks
atlas_ingest_job = dg.define_asset_job(
    "atlas_ingest",
    selection=dg.AssetSelection.assets("soma_experiment", "cells", "genes"),
    partitions_def=ATLAS_DATASETS,
    description="Ingest one atlas dataset (partition) into SOMA, `cells` and `genes`, then check the tables.",
)

hpa_ingest_job = dg.define_asset_job(
    "hpa_ingest",
    selection=dg.AssetSelection.assets("hpa_subcellular"),
    description="Ingest the newest HPA subcellular_location.tsv of the drop folder, then check the table.",
)
