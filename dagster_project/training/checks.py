"""Checks of the training domain: the promotion gate on every evaluation, and the tables it writes (`models` by
each model asset, `evaluations` by each evaluation asset: schema, unique keys, rows)."""

from __future__ import annotations

import models
from dagster_project._checks import table_checks
from dagster_project.training.evaluations import CANDIDATE_KINDS, GATE_CHECKS, evaluation_key
from dagster_project.training.model_assets import model_key

__all__ = ["TRAINING_CHECKS"]

TRAINING_CHECKS = [
    *GATE_CHECKS,
    *(table_checks(model_key(kind), "models") for kind in models.kinds()),
    table_checks("model_mitosis_cnn", "models"),
    *(table_checks(evaluation_key(kind), "evaluations") for kind in CANDIDATE_KINDS),
]
