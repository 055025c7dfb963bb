"""Checks of the atlas tables: schema, unique keys, row counts, and gene ids that are Ensembl ids."""

from __future__ import annotations

from dagster_project._checks import table_checks

__all__ = ["ATLAS_CHECKS"]

ATLAS_CHECKS = [
    table_checks("cells", "cells"),
    # the `genes` asset is the `dataset_genes` table (the SQL view `genes` aggregates it per gene)
    table_checks("genes", "dataset_genes", gene_ids="mapped"),
    table_checks("hpa_subcellular", "hpa_subcellular", gene_ids="all"),
]
