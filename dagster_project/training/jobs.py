"""The training job: a partition's training set pinned, every model kind trained, evaluated and gated (partitioned
by atlas dataset, as its assets are)."""

from __future__ import annotations

import dagster as dg

from dagster_project.training.training_set import GROUP

__all__ = ["train_and_evaluate_job"]

train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate",
    selection=dg.AssetSelection.groups(GROUP),
    description="Pin one atlas dataset's training set (partition), train every model kind on it, evaluate each "
    "candidate against the baselines with cell-eval, and run the promotion gate and table checks.",
)
