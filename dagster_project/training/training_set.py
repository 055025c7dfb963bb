"""`training_set`: one dataset's cells pinned to the table versions and SOMA timestamp they were read at, and the
held-out split every model of the partition trains and is evaluated on."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

import models
from dagster_project._report import markdown_table
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import LakeResource
from dagster_project.training.upstream import model_failures, upstream_metadata

__all__ = ["GROUP", "PinnedTrainingSet", "TrainingSetConfig", "pinned_training_set", "training_set"]

GROUP = "training"


class TrainingSetConfig(dg.Config):
    """Which perturbations the models never see: named, or a seeded random fraction of the dataset's."""

    holdout_perturbations: list[str] = Field(default=[], description="target genes held out; empty: a fraction")
    holdout_fraction: float = Field(default=0.2, description="share of perturbations held out at random")
    seed: int = Field(default=0, description="seed of that random choice")


@dataclass(frozen=True)
class PinnedTrainingSet:
    """What a model asset reads back of the partition's `training_set`: the data snapshot and the split."""

    dataset: str
    snapshot: models.Snapshot
    split: models.Split


def pinned_training_set(context: dg.AssetExecutionContext) -> PinnedTrainingSet:
    """The training set the partition's newest `training_set` materialization pinned."""
    meta = upstream_metadata(context, "training_set", context.partition_key)
    return PinnedTrainingSet(
        context.partition_key, models.Snapshot.from_dict(meta["snapshot"]), models.Split.from_dict(meta["split"])
    )


def _digest(*parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dg.asset(
    group_name=GROUP,
    partitions_def=ATLAS_DATASETS,
    deps=["cells", "genes", "hpa_subcellular", "soma_experiment"],
    kinds={"tiledb", "delta"},
)
def training_set(
    context: dg.AssetExecutionContext, config: TrainingSetConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Pin the partition's dataset (Delta versions of `datasets`, `cells`, `dataset_genes`, `hpa_subcellular` and
    the SOMA timestamp) and choose its held-out perturbations; the model assets train on exactly this, whatever
    is ingested meanwhile. Its data version changes only when the data or the split does."""
    target = lake.open()
    with model_failures():
        data = models.load_perturb_data(target, context.partition_key)
        split = models.make_split(
            data, holdout=config.holdout_perturbations or None, fraction=config.holdout_fraction, seed=config.seed
        )
    assert data.snapshot is not None  # load_perturb_data always says what it read
    train, test = split.apply(data)
    perts, counts = np.unique(data.perturbation, return_counts=True)
    held = set(split.test_perturbations)
    cells = {
        "perturbation": [str(p) for p in perts],
        "cells": [int(n) for n in counts],
        "held_out": [str(p) in held for p in perts],
    }
    snapshot, split_dict = data.snapshot.to_dict(), split.to_dict()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(_digest(snapshot, split_dict)),
        metadata={
            "dataset_id": data.dataset_id,
            "snapshot": dg.MetadataValue.json(snapshot),
            "split": dg.MetadataValue.json(split_dict),
            "soma_timestamp": dg.MetadataValue.int(snapshot["soma_timestamp"] or 0),
            **{f"{t}_version": dg.MetadataValue.int(v) for t, v in sorted(snapshot["delta_versions"].items())},
            "n_cells": data.n_cells,
            "n_control_cells": int(data.is_control.sum()),
            "n_genes": data.n_genes,
            "n_perturbations": len(data.perturbations),
            "held_out_perturbations": dg.MetadataValue.json(sorted(held)),
            "n_train_cells": train.n_cells,
            "n_test_cells": test.n_cells,
            "cells_per_perturbation": markdown_table(pa.table(cells), max_rows=60),
        },
    )
