"""What every perturbation model is: fit on a training split, predict each perturbation's effect, save, load.

A model predicts the *change* of mean log-expression against matched controls (the delta); `predict_cells`
turns deltas into predicted cells (control cells shifted by the delta), which is what cell-eval compares.
Artifacts are a folder: `model.json` (kind, params, genes) and `arrays.npz`, plus what a subclass adds
(e.g. torch weights); they are written to a temporary folder and renamed, so a crash leaves no half artifact.
"""

from __future__ import annotations

import json
import os
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import numpy.typing as npt

from models._artifacts import local_artifact, write_atomically
from models._data import PerturbData
from models._errors import ArtifactError, InvalidTrainingDataError
from models._features import GeneFeatures

__all__ = ["KINDS", "PerturbationModel", "load_model", "predict_cells", "register_kind"]

F32 = npt.NDArray[np.float32]
FORMAT_VERSION = 1
KINDS: dict[str, type[PerturbationModel]] = {}
M = TypeVar("M", bound="type[PerturbationModel]")


def register_kind(cls: M) -> M:
    KINDS[cls.kind] = cls
    return cls


class PerturbationModel(ABC):
    """Base class: subclasses set `kind`, implement `_fit` and `_predict`, and list their state arrays."""

    kind: ClassVar[str]
    learned: ClassVar[bool] = False  # a learned model (trained with Ray) rather than a baseline

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params
        self.gene_ids: list[str] = []
        self.gene_symbols: list[str] = []
        self.train_perturbations: list[str] = []
        self.mean_delta: F32 = np.zeros(0, np.float32)  # mean effect over all training perturbations
        self.features: GeneFeatures | None = None
        self.fit_metrics: dict[str, float] = {}

    # -- fitting ------------------------------------------------------------------------------------------
    def fit(self, train: PerturbData, features: GeneFeatures | None = None) -> PerturbationModel:
        if not train.is_control.any():
            raise InvalidTrainingDataError("the training data has no control cells")
        perts = train.perturbations
        if not perts:
            raise InvalidTrainingDataError("the training data has no perturbed cells")
        self.gene_ids = train.gene_ids.tolist()
        self.gene_symbols = train.gene_symbols.tolist()
        self.train_perturbations = perts
        self.features = features
        names, deltas = train.deltas()
        counts = np.array([(train.perturbation == p).sum() for p in names], np.float64)
        self.mean_delta = (deltas * (counts / counts.sum())[:, None]).sum(axis=0).astype(np.float32)
        self._fit(train, names, deltas)
        return self

    @abstractmethod
    def _fit(self, train: PerturbData, names: list[str], deltas: F32) -> None: ...

    def predict_delta(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        """(perturbations x genes) predicted change of mean log-expression, and the perturbations that fell back
        to the mean training effect because the model cannot represent them."""
        if not self.gene_ids:
            raise InvalidTrainingDataError(f"{self.kind} model is not fitted")
        if not perturbations:
            raise InvalidTrainingDataError("no perturbations to predict")
        out, fallbacks = self._predict(list(perturbations))
        if not np.isfinite(out).all():
            raise InvalidTrainingDataError(f"{self.kind} predicted NaN or infinite values")
        return out.astype(np.float32), fallbacks

    @abstractmethod
    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]: ...

    # -- persistence --------------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        del arrays

    def _save_extra(self, folder: Path) -> None:
        del folder

    def _load_extra(self, folder: Path) -> None:
        del folder

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact folder at `path` (atomically: a temporary sibling, then a rename)."""
        return write_atomically(path, self._write)

    def _write(self, folder: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.params,
            "gene_ids": self.gene_ids,
            "gene_symbols": self.gene_symbols,
            "train_perturbations": self.train_perturbations,
            "fit_metrics": self.fit_metrics,
        }
        arrays: dict[str, npt.NDArray[Any]] = {"mean_delta": self.mean_delta, **self._arrays()}
        if self.features is not None:
            arrays.update(self.features.to_npz())
        cast(Any, np.savez)(folder / "arrays.npz", **arrays)
        self._save_extra(folder)
        (folder / "model.json").write_text(json.dumps(meta, indent=1))  # written last: marks a whole artifact


def load_model(path: str | os.PathLike[str]) -> PerturbationModel:
    """Read an artifact folder (or an `s3://` one, through this machine's cached copy); any missing, truncated or
    foreign file is an `ArtifactError`."""
    folder = local_artifact(path)
    try:
        meta = json.loads((folder / "model.json").read_text())
        kind = meta["kind"]
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"model artifact {folder} has format {meta.get('format_version')}, not {FORMAT_VERSION}"
            )
        if kind not in KINDS:
            raise ArtifactError(f"model artifact {folder} is of unknown kind {kind!r}")
        model = KINDS[kind](**meta["params"])
        model.gene_ids = list(meta["gene_ids"])
        model.gene_symbols = list(meta["gene_symbols"])
        model.train_perturbations = list(meta["train_perturbations"])
        model.fit_metrics = dict(meta.get("fit_metrics", {}))
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        model.mean_delta = np.asarray(arrays.pop("mean_delta"), np.float32)
        if "feature_matrix" in arrays:
            model.features = GeneFeatures.from_npz(arrays)
        model._set_arrays(arrays)
        model._load_extra(folder)
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ArtifactError(f"cannot load model artifact {folder}: {reason}") from None
    if len(model.mean_delta) != len(model.gene_ids):
        raise ArtifactError(f"model artifact {folder} is inconsistent: {len(model.gene_ids)} genes")
    return model


def predict_cells(
    model: PerturbationModel,
    controls: F32,
    n_cells: dict[str, int],
    *,
    seed: int = 0,
) -> tuple[F32, list[str], list[str]]:
    """Predicted cells: for each perturbation, `n` control cells (sampled) shifted by its predicted delta.

    Returns (cells x genes, each cell's perturbation, the perturbations that fell back).
    """
    perts = list(n_cells)
    deltas, fallbacks = model.predict_delta(perts)
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for p, delta in zip(perts, deltas, strict=True):
        pick = rng.integers(0, len(controls), size=n_cells[p])
        blocks.append(np.maximum(controls[pick] + delta, 0.0))
        labels += [p] * n_cells[p]
    return np.concatenate(blocks).astype(np.float32), labels, fallbacks
