"""`cellfarm train KIND --dataset NAME`: read, split, featurise, fit (baselines in process, learned models on
Ray Train), register. The registered version records the data snapshot and the split, so `evaluate` rebuilds
exactly the held-out set the model never saw.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import lake
from models import _baselines, _latent  # noqa: F401  (importing registers their kinds)
from models._base import KINDS, PerturbationModel
from models._data import Snapshot, load_perturb_data
from models._errors import InvalidTrainingDataError
from models._features import build_gene_features
from models._ray import ray_storage
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


def _run_key(*parts: Any) -> str:
    """A stable short hash of what a Ray run depends on: the same command on the same data gets the same run
    (and so resumes it), anything else a fresh one."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fit_on_ray(model: PerturbationModel, *, workers: int, storage: Path, run_name: str) -> None:
    from models._latent import LatentShift
    from models._ray import train_latent_on_ray

    assert isinstance(model, LatentShift)
    assert model.train_arrays is not None
    train_latent_on_ray(model, model.train_arrays, workers=workers, storage=storage, run_name=run_name)


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
    tune: bool = False,
    tune_trials: int = 4,
    at: Snapshot | None = None,
) -> ModelRecord:
    """Train one model and register it as a `candidate` version; returns its registry record.

    `tune`: first a small Ray Tune search of the learned model's hyperparameters, scored on validation
    perturbations carved from the training split (`models._tune`); the best config then trains the model.
    `at`: read the data as pinned by a `Snapshot` (e.g. a training set pinned beforehand) instead of as it is now.
    """
    base = dict(params or {}, seed=seed) if kind == "latent-shift" else dict(params or {})
    model = _new(kind, base)  # an unknown kind fails here, before any data is read
    if tune and kind != "latent-shift":
        what = "a baseline (nothing to tune)" if not model.learned else "not searchable yet"
        raise InvalidTrainingDataError(f"--tune searches latent-shift's hyperparameters; {kind} is {what}")
    if tune and tune_trials < 1:
        raise InvalidTrainingDataError(f"--tune-trials must be 1 or more, not {tune_trials}")
    data = load_perturb_data(target, dataset, at=at)
    chosen = make_split(data, kind=split, holdout=holdout, fraction=fraction, seed=seed)
    train_set, _ = chosen.apply(data)
    features = build_gene_features(target, data)
    unrepresented = [p for p in chosen.test_perturbations if not features.representable(p)]
    if unrepresented and on_missing_features == "error" and kind in ("linear", "latent-shift"):
        raise InvalidTrainingDataError(
            f"{kind} cannot represent held-out perturbation(s) {', '.join(unrepresented)}: no gene features"
        )
    snapshot = data.snapshot.to_dict() if data.snapshot else None
    storage = ray_storage(target.settings.local_state_dir / "ray")
    learned_on_ray = model.learned and (workers > 1 or ray_address is not None)
    metrics: dict[str, Any] = {}
    with _ray_if(learned_on_ray or tune, ray_address):
        if tune:
            from models._tune import tune_latent

            key = _run_key(kind, dataset, snapshot, chosen.to_dict(), model.params, tune_trials)
            outcome = tune_latent(
                train_set,
                features,
                params=model.params,
                trials=tune_trials,
                seed=seed,
                storage=storage,
                run_name=f"tune-{name or kind}-{key}",
            )
            model = _new(kind, {**base, **outcome.best})
            metrics["tune"] = outcome.summary
        if learned_on_ray:
            model.params["defer_training"] = True
        model.fit(train_set, features)
        if learned_on_ray:
            model.params.pop("defer_training")
            key = _run_key(kind, dataset, snapshot, chosen.to_dict(), model.params)
            _fit_on_ray(model, workers=workers, storage=storage, run_name=f"{name or kind}-{key}")
    trained_on = {
        **(snapshot or {}),
        "dataset": dataset,
        "split": chosen.to_dict(),
        "n_train_cells": train_set.n_cells,
        "unrepresented_holdout": unrepresented,
        "workers": workers if learned_on_ray else 1,
        "ray_address": ray_address,
    }
    metrics = {"fit": model.fit_metrics, **metrics}
    return register(target, model, name=name or kind, trained_on=trained_on, metrics=metrics)


def _ray_if(needed: bool, address: str | None) -> AbstractContextManager[Any]:
    """One Ray session for the whole command (the search and the final fit share it), only when needed."""
    if not needed:
        return nullcontext()
    from models._ray import ray_session

    return ray_session(address)
