"""One asset per perturbation model kind (`cellfarm train --list`): `model_<kind>` trains the kind on the split its
partition's `training_set` pinned and registers a new `models` version (re-materializing trains another one)."""

from typing import Any

import dagster as dg
from pydantic import Field

import models
from dagster_project.partitions import ATLAS_DATASETS
from dagster_project.resources import LakeResource, RayResource
from dagster_project.training.training_set import GROUP, pinned_training_set, training_set
from dagster_project.training.upstream import model_failures

__all__ = ["MODEL_ASSETS", "RAY_POOL", "ModelConfig", "model_asset", "model_key", "record_metadata"]

# The concurrency pool of the steps that run Ray: a data engineer limits it (`dagster instance concurrency set ray
# 1`) where two local Rays on one machine would fight over its cores; unlimited by default.
RAY_POOL = "ray"


class ModelConfig(dg.Config):
    """The model's hyperparameters (its kind's defaults when empty) and, for the learned model, a Ray Tune search."""

    params: dict[str, Any] = Field(default={}, description="hyperparameters; empty: the kind's defaults")
    tune: bool = Field(default=False, description="latent-shift: a Ray Tune search first")
    tune_trials: int = Field(default=4, description="trials of the search")


def model_key(kind: str) -> str:
    return "model_" + kind.replace("-", "_")


def record_metadata(record: models.ModelRecord) -> dict[str, Any]:
    """What a registry version is, as asset metadata."""
    return {
        "model": record.ref,
        "name": record.name,
        "version": dg.MetadataValue.int(record.version),
        "kind": record.kind,
        "stage": record.stage,
        "artifact": dg.MetadataValue.path(record.artifact_uri),
    }


def model_asset(kind: str) -> dg.AssetsDefinition:
    cls = models.KINDS[kind]
    what = "a learned model, on Ray Train with the Ray resource's workers" if cls.learned else "a baseline, in process"

    @dg.asset(
        name=model_key(kind),
        group_name=GROUP,
        partitions_def=ATLAS_DATASETS,
        deps=[training_set],
        kinds={"pytorch", "ray"} if cls.learned else {"python"},
        pool=RAY_POOL if cls.learned else None,
        description=f"`{kind}` ({what}) trained on the partition's `training_set`; each materialization registers "
        "a new `models` version recording that snapshot and split.",
    )
    def _model(
        context: dg.AssetExecutionContext, config: ModelConfig, lake: LakeResource, ray: RayResource
    ) -> dg.MaterializeResult:
        pinned = pinned_training_set(context)
        with model_failures():
            record = models.train(
                lake.open(),
                kind,
                pinned.dataset,
                holdout=list(pinned.split.test_perturbations),
                seed=pinned.split.seed,
                at=pinned.snapshot,
                workers=ray.workers,
                ray_address=ray.ray_address,
                params=config.params or None,
                tune=config.tune,
                tune_trials=config.tune_trials,
            )
        context.log.info(f"registered {record.ref} ({kind}) on {pinned.dataset}")
        fit = record.metrics.get("fit", {})
        return dg.MaterializeResult(
            data_version=dg.DataVersion(record.ref),
            metadata={
                **record_metadata(record),
                "trained_on": dg.MetadataValue.json(record.trained_on),
                "metrics": dg.MetadataValue.json(record.metrics),
                "params": dg.MetadataValue.json(record.params),
                **{f"fit_{k}": dg.MetadataValue.float(float(v)) for k, v in fit.items() if isinstance(v, int | float)},
            },
        )

    return _model


MODEL_ASSETS = [model_asset(kind) for kind in models.kinds()]
