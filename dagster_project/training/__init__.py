"""The training domain: per atlas dataset (partition), a training set pinned to table versions, one model per kind
trained on it (the learned one on Ray), cell-eval evaluations against the baselines, and the promotion gate."""

from __future__ import annotations

import dagster as dg

from dagster_project.training.checks import TRAINING_CHECKS
from dagster_project.training.evaluations import (
    CANDIDATE_KINDS,
    EVALUATION_ASSETS,
    GATE_CHECK,
    EvaluationConfig,
    evaluation_key,
)
from dagster_project.training.imaging_model import ImagingModelConfig, model_mitosis_cnn
from dagster_project.training.jobs import train_and_evaluate_job
from dagster_project.training.model_assets import MODEL_ASSETS, ModelConfig, model_key, record_metadata
from dagster_project.training.training_set import TrainingSetConfig, training_set
from dagster_project.training.upstream import model_failures, upstream_metadata

__all__ = [
    "CANDIDATE_KINDS",
    "GATE_CHECK",
    "EvaluationConfig",
    "ImagingModelConfig",
    "ModelConfig",
    "TrainingSetConfig",
    "defs",
    "evaluation_key",
    "model_failures",
    "model_key",
    "record_metadata",
    "upstream_metadata",
]

defs = dg.Definitions(
    assets=[training_set, *MODEL_ASSETS, *EVALUATION_ASSETS, model_mitosis_cnn],
    asset_checks=TRAINING_CHECKS,
    jobs=[train_and_evaluate_job],
)
