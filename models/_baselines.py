"""The baselines every model must beat (the field's lesson of 2025: deep models often did not).

- `control-mean`: no effect at all; a prediction is the control cells.
- `perturbation-mean`: a seen perturbation's own mean effect; an unseen one gets the mean effect of all
  training perturbations (the Virtual Cell Challenge's cell-mean baseline).
- `additive`: a combination "A+B" is the sum of A's and B's effects (each as `perturbation-mean`).
- `linear`: ridge regression from the target gene's features (HPA locations, co-expression) to its effect;
  a target with no features falls back to the mean effect, and says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models._base import PerturbationModel, register_kind
from models._data import PerturbData
from models._errors import InvalidTrainingDataError
from models._features import split_targets

__all__ = ["Additive", "ControlMean", "Linear", "PerturbationMean"]

F32 = npt.NDArray[np.float32]


@register_kind
class ControlMean(PerturbationModel):
    kind = "control-mean"

    def _fit(self, train: PerturbData, names: list[str], deltas: F32) -> None:
        pass

    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        return np.zeros((len(perturbations), len(self.gene_ids)), np.float32), []


@register_kind
class PerturbationMean(PerturbationModel):
    kind = "perturbation-mean"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.names: list[str] = []
        self.deltas: F32 = np.zeros((0, 0), np.float32)

    def _fit(self, train: PerturbData, names: list[str], deltas: F32) -> None:
        self.names, self.deltas = names, deltas

    def _lookup(self, perturbation: str) -> F32:
        index = {p: i for i, p in enumerate(self.names)}
        i = index.get(perturbation)
        return self.deltas[i] if i is not None else self.mean_delta

    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        return np.stack([self._lookup(p) for p in perturbations]), []

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"names": np.array(self.names), "deltas": self.deltas}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.names = [str(s) for s in arrays["names"].tolist()]
        self.deltas = np.asarray(arrays["deltas"], np.float32)


@register_kind
class Additive(PerturbationMean):
    kind = "additive"

    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        out = []
        for p in perturbations:
            if p in self.names or "+" not in p:
                out.append(self._lookup(p))
            else:
                out.append(np.sum([self._lookup(t) for t in split_targets(p)], axis=0))
        return np.stack(out).astype(np.float32), []


@register_kind
class Linear(PerturbationModel):
    """Ridge: delta = standardised features @ W + b, solved in closed form (genes share the features)."""

    kind = "linear"

    def __init__(self, alpha: float = 10.0, **params: Any) -> None:
        super().__init__(alpha=alpha, **params)
        self.alpha = float(alpha)
        self.W: F32 = np.zeros((0, 0), np.float32)
        self.b: F32 = np.zeros(0, np.float32)
        self.mu: F32 = np.zeros(0, np.float32)
        self.sd: F32 = np.zeros(0, np.float32)

    def _fit(self, train: PerturbData, names: list[str], deltas: F32) -> None:
        if self.features is None:
            raise InvalidTrainingDataError("the linear model needs gene features")
        F, missing = self.features.features(names, on_missing="zeros")
        keep = [i for i, p in enumerate(names) if p not in set(missing)]
        if len(keep) < 2:
            raise InvalidTrainingDataError("the linear model needs 2+ training perturbations with gene features")
        F, D = F[keep].astype(np.float64), deltas[keep].astype(np.float64)
        self.mu = F.mean(axis=0).astype(np.float32)
        sd = F.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0).astype(np.float32)
        Z = (F - self.mu) / self.sd
        self.b = D.mean(axis=0).astype(np.float32)
        # W = (Z'Z + aI)^-1 Z'(D - b): p features x genes
        A = Z.T @ Z + self.alpha * np.eye(Z.shape[1])
        self.W = np.linalg.solve(A, Z.T @ (D - self.b)).astype(np.float32)
        fit = Z @ self.W + self.b
        self.fit_metrics = {"train_r2": float(1 - ((fit - D) ** 2).sum() / max(((D - D.mean(0)) ** 2).sum(), 1e-12))}

    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        assert self.features is not None
        F, missing = self.features.features(perturbations, on_missing="zeros")
        out = ((F - self.mu) / self.sd) @ self.W + self.b
        for i, p in enumerate(perturbations):
            if p in missing:  # an explicit, reported fallback
                out[i] = self.mean_delta
        return out.astype(np.float32), missing

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"W": self.W, "b": self.b, "mu": self.mu, "sd": self.sd}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.W, self.b = np.asarray(arrays["W"], np.float32), np.asarray(arrays["b"], np.float32)
        self.mu, self.sd = np.asarray(arrays["mu"], np.float32), np.asarray(arrays["sd"], np.float32)
