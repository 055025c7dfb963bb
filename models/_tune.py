"""`cellfarm train latent-shift --tune`: a small Ray Tune search over latent-shift's learning rate and sizes.

Trials are scored on validation perturbations carved (seeded) out of the *training* perturbations, never on the
held-out test ones: each trial fits on the other training perturbations and predicts the validation ones it
never saw, which is the job the test split later asks of the final model. The score is the mean over validation
perturbations of the Pearson correlation (across genes) of predicted vs. true pseudobulk delta (cell-eval's
`pearson_delta`); the MSE of the deltas is reported beside it. The caller fits the final model with the best
config on the whole training split.

Trial 0 is always the untuned config (the defaults, or what the caller set), so the search never picks a config
that validates worse than it. The experiment lives under `<lake>/_state/ray/<run>`: running the same command
again restores it (finished trials are kept, unfinished ones rerun) instead of starting over.
"""

from __future__ import annotations

import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from models._data import PerturbData
from models._errors import InvalidTrainingDataError, ModelError
from models._features import GeneFeatures
from models._latent import LatentShift, TrainArrays, fit_epochs, new_latent_net, predict_shift
from models._ray import pickled_by_value

__all__ = ["METRIC", "TuneOutcome", "tune_latent", "validation_perturbations"]

F32 = npt.NDArray[np.float32]
METRIC = "pearson_delta"  # maximised
TUNED = ("lr", "latent", "hidden")
MAX_TRIAL_EPOCHS = 10  # trials only rank configs; the final fit runs the full --epochs
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class TuneOutcome:
    best: dict[str, Any]  # the chosen config (lr, latent, hidden)
    summary: dict[str, Any]  # what the registry records under metrics["tune"]


def validation_perturbations(train: PerturbData, features: GeneFeatures, *, seed: int) -> list[str]:
    """A seeded subset of the training perturbations that the gene features can represent (a perturbation with
    no features is predicted as the mean effect whatever the config, so it would not rank configs)."""
    usable = [p for p in train.perturbations if features.representable(p)]
    if len(usable) < 2:
        raise InvalidTrainingDataError(
            f"--tune needs 2+ training perturbations with gene features to hold some out, found {len(usable)}"
        )
    n = min(max(1, round(VALIDATION_FRACTION * len(usable))), len(usable) - 1)
    rng = np.random.default_rng([seed, 1])  # not the split's own stream (seed alone)
    return sorted(rng.choice(usable, size=n, replace=False).tolist())


def _score(pred: F32, true: F32) -> dict[str, float]:
    """Mean per-perturbation Pearson of the deltas across genes (0 where a delta is flat), and their MSE."""
    pc = pred - pred.mean(axis=1, keepdims=True)
    tc = true - true.mean(axis=1, keepdims=True)
    denom = np.sqrt((pc**2).sum(axis=1) * (tc**2).sum(axis=1))
    r = np.where(denom > 0, (pc * tc).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    return {METRIC: float(r.mean()), "mse_delta": float(((pred - true) ** 2).mean())}


@dataclass(frozen=True)
class _Payload:
    """What a trial needs, as plain arrays: the inner training split laid out for `fit_epochs`, and the
    validation perturbations' standardised features, their true deltas and the reference controls."""

    arrays: TrainArrays
    n_genes: int
    n_features: int
    reference: F32
    features: F32
    truth: F32
    steps_per_epoch: int
    seed: int
    epochs: int
    mean_effect: F32  # the inner split's mean training effect: the trivial prediction a trial should beat


def _trial(config: dict[str, Any], payload: _Payload) -> None:
    """One Tune trial: fit a net with `config` on the inner training split, report the validation score each
    epoch."""
    from ray import tune

    torch.set_num_threads(1)  # trials run side by side, one CPU each
    net = new_latent_net(
        payload.n_genes,
        payload.n_features,
        latent=int(config["latent"]),
        hidden=int(config["hidden"]),
        seed=payload.seed,
    )

    def on_epoch(epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        del epoch, state
        pred = predict_shift(net, payload.reference, payload.features)
        tune.report({**metrics, **_score(pred, payload.truth)})

    fit_epochs(
        net,
        payload.arrays,
        epochs=payload.epochs,
        steps_per_epoch=payload.steps_per_epoch,
        lr=float(config["lr"]),
        seed=payload.seed,
        on_epoch=on_epoch,
    )


def _payload(
    train: PerturbData, features: GeneFeatures, params: dict[str, Any], validation: list[str], epochs: int
) -> _Payload:
    """Prepare (not train) a latent-shift on the training perturbations minus the validation ones, and the
    validation perturbations' truth."""
    rest = [p for p in train.perturbations if p not in set(validation)]
    model = LatentShift(**{**params, "defer_training": True})
    model.fit(train.where(rest), features)
    assert model.train_arrays is not None
    names, truth = train.where(validation).deltas()
    feats, _ = features.features(names, on_missing="zeros")
    return _Payload(
        arrays=model.train_arrays,
        n_genes=len(model.gene_ids),
        n_features=features.dim,
        reference=model.reference,
        features=model.standardise(feats),
        truth=truth,
        steps_per_epoch=int(model.params["steps_per_epoch"]),
        seed=int(model.params["seed"]),
        epochs=epochs,
        mean_effect=model.mean_delta,
    )


def _progress_callback(total: int, epochs: int) -> Any:
    from ray.tune import Callback
    from ray.tune.experiment import Trial

    class Progress(Callback):
        """One line per trial epoch on stderr (stdout carries the command's result)."""

        def on_trial_result(
            self, iteration: int, trials: list[Trial], trial: Trial, result: dict[Any, Any], **info: Any
        ) -> None:
            cfg = trial.config
            print(
                f"[cellfarm tune] trial {trials.index(trial) + 1}/{total} epoch {int(result['epoch'])}/{epochs} "
                f"lr={cfg['lr']:.2g} latent={cfg['latent']} hidden={cfg['hidden']} "
                f"{METRIC}={result[METRIC]:.4f} mse_delta={result['mse_delta']:.5f}",
                file=sys.stderr,
                flush=True,
            )

    return Progress()


def _tuner(trainable: Any, *, start: dict[str, Any], trials: int, epochs: int, seed: int, path: Path) -> Any:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if tune.Tuner.can_restore(path):  # the same search was started before (killed, or finished): continue it
        print(f"[cellfarm tune] restoring the search in {path}", file=sys.stderr, flush=True)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    space = {
        "lr": tune.loguniform(3e-4, 1e-2),
        "latent": tune.choice([16, 32, 64]),
        "hidden": tune.choice([64, 128, 256]),
    }
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=trials,
            search_alg=BasicVariantGenerator(points_to_evaluate=[start], random_state=seed),
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            verbose=0,
            callbacks=[_progress_callback(trials, epochs)],
        ),
    )


def tune_latent(
    train: PerturbData,
    features: GeneFeatures,
    *,
    params: dict[str, Any],
    trials: int,
    seed: int,
    storage: Path,
    run_name: str,
) -> TuneOutcome:
    """Run the search (on the connected Ray) and return the best config with every trial's score."""
    from ray import tune

    if trials < 1:
        raise InvalidTrainingDataError(f"--tune-trials must be 1 or more, not {trials}")
    validation = validation_perturbations(train, features, seed=seed)
    epochs = max(1, min(int(params.get("epochs", 30)), MAX_TRIAL_EPOCHS))
    payload = _payload(train, features, params, validation, epochs)
    start = {k: params[k] for k in TUNED}  # trial 0: the config the model would train with untuned
    # Tune's own messages go to stderr: stdout carries the command's result (the model ref)
    with redirect_stdout(sys.stderr), pickled_by_value(sys.modules[__name__], sys.modules[fit_epochs.__module__]):
        trainable = tune.with_resources(tune.with_parameters(_trial, payload=payload), {"cpu": 1})
        grid = _tuner(trainable, start=start, trials=trials, epochs=epochs, seed=seed, path=storage / run_name).fit()
    rows = [_trial_row(r) for r in grid]
    scored = [r for r in rows if r.get(METRIC) is not None]
    if not scored:
        errors = "; ".join(str(r.get("error", "no result")) for r in rows)
        raise ModelError(f"every tune trial failed: {' '.join(errors.split())[:300]}")
    best = max(scored, key=lambda r: float(r[METRIC]))
    # the same validation scored for "every perturbation has the mean training effect": a yardstick
    yardstick = _score(np.repeat(payload.mean_effect[None], len(payload.truth), 0), payload.truth)
    summary = {
        "metric": METRIC,
        "mode": "max",
        "validation_perturbations": validation,
        "trial_epochs": epochs,
        "trials": rows,
        "best": {"config": best["config"], METRIC: best[METRIC], "mse_delta": best["mse_delta"]},
        "mean_effect_baseline": yardstick,
        "experiment": str(storage / run_name),
    }
    print(
        f"[cellfarm tune] best: {best['config']} {METRIC}={best[METRIC]:.4f} "
        f"(the mean training effect scores {yardstick[METRIC]:.4f})",
        file=sys.stderr,
        flush=True,
    )
    return TuneOutcome(best=dict(best["config"]), summary=summary)


def _trial_row(result: Any) -> dict[str, Any]:
    config = {k: result.config[k] for k in TUNED}
    metrics = result.metrics or {}
    if result.error is not None or METRIC not in metrics:
        return {"config": config, "error": " ".join(str(result.error or "no result").split())[:200]}
    return {
        "config": config,
        METRIC: float(metrics[METRIC]),
        "mse_delta": float(metrics["mse_delta"]),
        "epochs": int(metrics["epoch"]),
    }
