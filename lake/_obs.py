"""Normalize an h5ad's obs into the lake's ``cells`` schema: CELLxGENE ontology columns kept, and the
Perturb-seq conventions of the field mapped onto ``perturbation`` / ``is_control`` / ``guide_id``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from lake._schemas import CELLS

__all__ = ["CONTROL_LABELS", "PerturbationColumns", "cells_table", "detect_perturbations"]

_TARGET_COLUMNS = (
    "perturbation",
    "target_gene",
    "gene_target",
    "target_genes",
    "perturbed_gene",
    "target",
    "gene",
)
_GUIDE_COLUMNS = ("guide_id", "guide_ids", "sgrna", "sgRNA", "grna", "gRNA", "guide", "guide_identity")
_REPLICATE_COLUMNS = ("replicate", "bio_rep", "biological_replicate", "batch", "gem_group")
_CELL_TYPE_COLUMNS = ("cell_type", "celltype", "cell_types", "CellType", "cell_label")
CONTROL_LABELS = frozenset(
    {
        "non-targeting",
        "nontargeting",
        "non_targeting",
        "nt",
        "control",
        "ctrl",
        "safe-targeting",
        "safe_targeting",
        "negative_control",
        "negctrl",
        "scrambled",
    }
)
_SPLIT = re.compile(r"\s*(?:\|\||\+|,|;)\s*")
# Columns copied verbatim when a CELLxGENE-curated file has them.
_PASSTHROUGH = tuple(
    n
    for n in CELLS.schema.names
    if n.endswith("_ontology_term_id")
    or n in ("assay", "tissue", "disease", "development_stage", "sex", "donor_id", "suspension_type")
)


@dataclass(frozen=True)
class PerturbationColumns:
    """Which obs columns carried the perturbation, guide and replicate, and the normalized values."""

    target_column: str | None
    guide_column: str | None
    perturbation: list[str | None]
    is_control: list[bool | None]
    guide_id: list[str | None]


def _normalize_target(value: Any) -> tuple[str | None, bool | None]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, None
    tokens = [t for t in _SPLIT.split(str(value).strip()) if t]
    genes = [t for t in tokens if t.lower() not in CONTROL_LABELS]
    if not tokens:
        return None, None
    if not genes:
        return None, True
    return "+".join(genes), False


def _cellxgene_genetic(obs: pd.DataFrame, uns_perturbations: Mapping[str, Any] | None) -> PerturbationColumns:
    """CELLxGENE schema 7: ``genetic_perturbation_id`` (ids joined by " || ") and its strategy."""
    ids = obs["genetic_perturbation_id"].astype(object).tolist()
    strategy = obs.get("genetic_perturbation_strategy", pd.Series([None] * len(obs))).astype(object).tolist()
    uns = dict(uns_perturbations or {})

    def targets(pid: str) -> list[str]:
        info = uns.get(pid) or {}
        feats = info.get("target_features") if isinstance(info, Mapping) else None
        if isinstance(feats, Mapping) and feats:
            return [str(v) for v in feats.values()]
        return [pid]

    pert: list[str | None] = []
    ctrl: list[bool | None] = []
    for pid, strat in zip(ids, strategy, strict=True):
        if pid is None or str(pid) == "na":
            pert.append(None)
            ctrl.append(None)
        elif str(strat) == "control":
            pert.append(None)
            ctrl.append(True)
        else:
            pert.append("+".join(g for p in str(pid).split(" || ") for g in targets(p)))
            ctrl.append(False)
    guides = [None if i is None or str(i) == "na" else str(i) for i in ids]
    return PerturbationColumns("genetic_perturbation_id", "genetic_perturbation_id", pert, ctrl, guides)


def detect_perturbations(obs: pd.DataFrame, uns_perturbations: Mapping[str, Any] | None = None) -> PerturbationColumns:
    if "genetic_perturbation_id" in obs.columns:
        return _cellxgene_genetic(obs, uns_perturbations)
    target_col = next((c for c in _TARGET_COLUMNS if c in obs.columns), None)
    guide_col = next((c for c in _GUIDE_COLUMNS if c in obs.columns), None)
    n = len(obs)
    guides: list[str | None] = (
        [None if pd.isna(g) else str(g) for g in obs[guide_col].astype(object)] if guide_col else [None] * n
    )
    if target_col is None:
        return PerturbationColumns(None, guide_col, [None] * n, [None] * n, guides)
    # Categorical columns normalize once per category rather than once per cell.
    series = obs[target_col].astype("category")
    cats = [_normalize_target(c) for c in series.cat.categories]
    codes = series.cat.codes.to_numpy()
    pert = [cats[c][0] if c >= 0 else None for c in codes]
    ctrl = [cats[c][1] if c >= 0 else None for c in codes]
    return PerturbationColumns(target_col, guide_col, pert, ctrl, guides)


def _string_column(obs: pd.DataFrame, names: tuple[str, ...]) -> pa.Array | None:
    for name in names:
        if name in obs.columns:
            col = obs[name].astype(object)
            return pa.array([None if pd.isna(v) else str(v) for v in col], type=pa.string())
    return None


def cells_table(
    obs: pd.DataFrame,
    *,
    dataset_id: str,
    organism: str,
    joinid_start: int,
    perturbations: PerturbationColumns,
    raw_sum: npt.NDArray[np.float64],
    nnz: npt.NDArray[np.int64],
) -> pa.Table:
    """The ``cells`` rows (also the SOMA obs rows) of one dataset."""
    n = len(obs)
    columns: dict[str, pa.Array] = {
        "soma_joinid": pa.array(np.arange(joinid_start, joinid_start + n, dtype=np.int64)),
        "dataset_id": pa.array([dataset_id] * n, type=pa.string()),
        "obs_id": pa.array(obs.index.astype(str).tolist(), type=pa.string()),
        "organism": pa.array([organism] * n, type=pa.string()),
        "perturbation": pa.array(perturbations.perturbation, type=pa.string()),
        "is_control": pa.array(perturbations.is_control, type=pa.bool_()),
        "guide_id": pa.array(perturbations.guide_id, type=pa.string()),
        "raw_sum": pa.array(raw_sum, type=pa.float64()),
        "nnz": pa.array(nnz, type=pa.int64()),
    }
    for name in _PASSTHROUGH:
        col = _string_column(obs, (name,))
        if col is not None:
            columns[name] = col
    for name, candidates in (("cell_type", _CELL_TYPE_COLUMNS), ("replicate", _REPLICATE_COLUMNS)):
        col = _string_column(obs, candidates)
        if col is not None:
            columns[name] = col
    arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in CELLS.schema]
    return pa.Table.from_arrays(arrays, schema=CELLS.schema)
