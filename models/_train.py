"""`cellfarm train KIND --dataset NAME`: read, split, featurise, fit (baselines in process, learned models on
Ray Train), register. The registered version records the data snapshot and the split, so `evaluate` rebuilds
exactly the held-out set the model never saw.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import lake
from models import _baselines, _latent  # noqa: F401  (importing registers their kinds)
from models._base import KINDS, PerturbationModel
from models._data import load_perturb_data
from models._errors import InvalidTrainingDataError
from models._features import build_gene_features
from models._registry import ModelRecord, register
from models._splits import SplitKind, make_split

__all__ = ["BASELINES", "kinds", "train"]

BASELINES = ("control-mean", "perturbation-mean", "additive", "linear")


def kinds() -> list[str]:
    """Every trainable kind: the baselines first, then the learned models."""
    return [*BASELINES, *sorted(k for k in KINDS if k not in BASELINES)]


def _new(kind: str, params: dict[str, Any]) -> PerturbationModel:
    if kind not in kinds():
        raise InvalidTrainingDataError(
            f"unknown model kind {kind!r}; `cellfarm train --list` shows {', '.join(kinds())}"
        )
    return KINDS[kind](**params)


def train(
    target: lake.Lake,
    kind: str,
    dataset: str,
    *,
    holdout: list[str] | None = None,
    fraction: float = 0.2,
    split: SplitKind = "perturbation",
    seed: int = 0,
    workers: int = 1,
    ray_address: str | None = None,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    on_missing_features: Literal["fallback", "error"] = "fallback",
) -> ModelRecord:
    """Train one model and register it as a `candidate` version; returns its registry record."""
    model = _new(kind, dict(params or {}, seed=seed) if kind == "latent-shift" else dict(params or {}))
    data = load_perturb_data(target, dataset)
    chosen = make_split(data, kind=split, holdout=holdout, fraction=fraction, seed=seed)
    train_set, _ = chosen.apply(data)
    features = build_gene_features(target, data)
    unrepresented = [p for p in chosen.test_perturbations if not features.representable(p)]
    if unrepresented and on_missing_features == "error" and kind in ("linear", "latent-shift"):
        raise InvalidTrainingDataError(
            f"{kind} cannot represent held-out perturbation(s) {', '.join(unrepresented)}: no gene features"
        )
    learned_on_ray = model.learned and (workers > 1 or ray_address is not None)
    if learned_on_ray:
        model.params["defer_training"] = True
    model.fit(train_set, features)
    if learned_on_ray:
        from models._latent import LatentShift
        from models._ray import ray_session, train_latent_on_ray

        assert isinstance(model, LatentShift)
        assert model.train_arrays is not None
        model.params.pop("defer_training")
        key = hashlib.sha256(
            json.dumps(
                [kind, dataset, data.snapshot.to_dict() if data.snapshot else None, chosen.to_dict(), model.params],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:12]
        with ray_session(ray_address):
            train_latent_on_ray(
                model,
                model.train_arrays,
                workers=workers,
                storage=target.settings.local_state_dir / "ray",
                run_name=f"{name or kind}-{key}",
            )
    trained_on = {
        **(data.snapshot.to_dict() if data.snapshot else {}),
        "dataset": dataset,
        "split": chosen.to_dict(),
        "n_train_cells": train_set.n_cells,
        "unrepresented_holdout": unrepresented,
        "workers": workers if learned_on_ray else 1,
        "ray_address": ray_address,
    }
    return register(target, model, name=name or kind, trained_on=trained_on, metrics={"fit": model.fit_metrics})
