"""`latent-shift`: a learned perturbation model that can predict perturbations it never saw (CPA/scGen style).

An autoencoder of single cells; a perturbation is a shift in its latent space computed from the target gene's
features (HPA locations, co-expression), not from its identity, so an unseen target still gets a shift.
Training pairs each perturbation's cells with control cells and fits the decoded, shifted controls' mean to
the perturbed cells' mean (the data is unpaired: no cell is seen both ways), plus the autoencoder's
reconstruction of the controls. The predicted effect is decoded(shifted) - decoded(unshifted) over a fixed
reference set of control cells, so the autoencoder's own bias cancels.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models._base import PerturbationModel, register_kind
from models._data import PerturbData
from models._device import default_device
from models._errors import ArtifactError, InvalidTrainingDataError

__all__ = ["LatentNet", "LatentShift", "TrainArrays", "fit_epochs", "new_latent_net", "predict_shift"]

F32 = npt.NDArray[np.float32]
TrainArrays = dict[str, npt.NDArray[Any]]
# called after each epoch with (epoch, metrics, state_dict); returns nothing (Ray reports a checkpoint here)
EpochHook = Callable[[int, dict[str, float], dict[str, Any]], None]


class LatentNet(nn.Module):
    def __init__(self, n_genes: int, n_features: int, *, latent: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_genes, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, n_genes))
        self.shift = nn.Sequential(nn.Dropout(0.1), nn.Linear(n_features, 64), nn.GELU(), nn.Linear(64, latent))

    def forward(self, controls: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """controls (B, m, genes), features (B, f) -> (shifted decoding, plain reconstruction), each (B, m, genes)."""
        z = self.enc(controls)
        return self.dec(z + self.shift(features)[:, None, :]), self.dec(z)


def new_latent_net(n_genes: int, n_features: int, *, latent: int, hidden: int, seed: int) -> LatentNet:
    """A fresh net with seeded initial weights (every Ray worker builds the same one)."""
    torch.manual_seed(seed)
    return LatentNet(n_genes, n_features, latent=latent, hidden=hidden)


def predict_shift(net: nn.Module, reference: F32, features: F32) -> F32:
    """Predicted effects, one row per row of standardised `features`: the mean of decoded(shifted) minus
    decoded(unshifted) over the reference control cells, so the autoencoder's own bias cancels."""
    net = net.eval()
    with torch.no_grad():
        ref = torch.from_numpy(reference)[None].expand(len(features), -1, -1)
        shifted, plain = net(ref, torch.from_numpy(features))
        return np.asarray((shifted.mean(1) - plain.mean(1)).numpy(), np.float32)


def fit_epochs(
    net: nn.Module,
    arrays: TrainArrays,
    *,
    epochs: int,
    start_epoch: int = 0,
    steps_per_epoch: int = 50,
    batch_perturbations: int = 8,
    cells_per_perturbation: int = 64,
    lr: float = 1e-3,
    recon_weight: float = 0.1,
    seed: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
) -> dict[str, float]:
    """The training loop, shared by the in-process fit and each Ray Train worker (`net` may be DDP-wrapped).

    `arrays`: X (cells x genes), pert_index (cell -> perturbation row, -1 for controls), features
    (perturbations x f, standardised). Seeded per worker by the caller.
    """
    dev = next(net.parameters()).device
    X = torch.from_numpy(arrays["X"]).to(dev)
    feats = torch.from_numpy(arrays["features"]).to(dev)
    pidx = arrays["pert_index"]
    ctrl_rows = np.flatnonzero(pidx < 0)
    by_pert = [np.flatnonzero(pidx == i) for i in range(len(feats))]
    by_pert_ok = [i for i, rows in enumerate(by_pert) if len(rows)]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    rng = np.random.default_rng(seed + 7919 * start_epoch)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        net.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            chosen = rng.choice(by_pert_ok, size=batch_perturbations)
            c = torch.from_numpy(rng.choice(ctrl_rows, size=(batch_perturbations, cells_per_perturbation)))
            p_rows = np.stack([rng.choice(by_pert[i], size=cells_per_perturbation) for i in chosen])
            xc, xp = X[c.to(dev)], X[torch.from_numpy(p_rows).to(dev)]
            shifted, recon = net(xc, feats[torch.from_numpy(chosen).to(dev)])
            loss = ((shifted.mean(1) - xp.mean(1)) ** 2).mean() + recon_weight * ((recon - xc) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        metrics = {"epoch": float(epoch + 1), "loss": total / steps_per_epoch}
        if on_epoch is not None:
            state = {"model": _unwrap(net).state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}
            on_epoch(epoch + 1, metrics, state)
    return metrics


def _unwrap(net: nn.Module) -> nn.Module:
    inner = getattr(net, "module", None)
    return inner if isinstance(inner, nn.Module) else net


@register_kind
class LatentShift(PerturbationModel):
    kind = "latent-shift"
    learned = True

    def __init__(
        self,
        latent: int = 32,
        hidden: int = 128,
        epochs: int = 30,
        steps_per_epoch: int = 50,
        lr: float = 1e-3,
        seed: int = 0,
        n_reference: int = 512,
        **params: Any,
    ) -> None:
        super().__init__(
            latent=latent,
            hidden=hidden,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            lr=lr,
            seed=seed,
            n_reference=n_reference,
            **params,
        )
        self.net: LatentNet | None = None
        self.f_mu: F32 = np.zeros(0, np.float32)
        self.f_sd: F32 = np.zeros(0, np.float32)
        self.reference: F32 = np.zeros((0, 0), np.float32)
        self.train_arrays: TrainArrays | None = None

    def prepare(self, train: PerturbData) -> TrainArrays:
        """Standardise the features and lay out the training arrays (what a Ray worker receives)."""
        if self.features is None:
            raise InvalidTrainingDataError("latent-shift needs gene features")
        names = self.train_perturbations
        F, missing = self.features.features(names, on_missing="zeros")
        self.f_mu = F.mean(axis=0).astype(np.float32)
        sd = F.std(axis=0)
        self.f_sd = np.where(sd > 0, sd, 1.0).astype(np.float32)
        index = {p: i for i, p in enumerate(names) if p not in set(missing)}
        pert_index = np.array([index.get(p, -2) for p in train.perturbation.tolist()], np.int64)
        pert_index[train.is_control] = -1
        keep = pert_index >= -1  # perturbations with no features are left out of training
        rng = np.random.default_rng(int(self.params["seed"]))
        ctrl = train.X[train.is_control]
        self.reference = ctrl[
            rng.choice(len(ctrl), size=min(int(self.params["n_reference"]), len(ctrl)), replace=False)
        ]
        return {
            "X": np.ascontiguousarray(train.X[keep]),
            "pert_index": pert_index[keep],
            "features": self.standardise(F),
        }

    def standardise(self, features: F32) -> F32:
        """Raw gene features -> the standardised input of the shift network (training statistics)."""
        return ((features - self.f_mu) / self.f_sd).astype(np.float32)

    def new_net(self) -> LatentNet:
        return self.net_factory()()

    def net_factory(self) -> Callable[[], LatentNet]:
        """A small picklable constructor of a fresh, seeded net: what Ray workers get instead of the whole model
        (which carries every training cell)."""
        assert self.features is not None
        return partial(
            new_latent_net,
            len(self.gene_ids),
            self.features.dim,
            latent=int(self.params["latent"]),
            hidden=int(self.params["hidden"]),
            seed=int(self.params["seed"]),
        )

    def _fit(self, train: PerturbData, names: list[str], deltas: F32) -> None:
        self.train_arrays = self.prepare(train)
        if self.params.get("defer_training"):
            return  # trained on Ray by `models.train`, which sets `net` afterwards
        net = self.new_net().to(default_device())
        self.fit_metrics = fit_epochs(
            net,
            self.train_arrays,
            epochs=int(self.params["epochs"]),
            steps_per_epoch=int(self.params["steps_per_epoch"]),
            lr=float(self.params["lr"]),
            seed=int(self.params["seed"]),
        )
        self.net = net.cpu()

    def _predict(self, perturbations: list[str]) -> tuple[F32, list[str]]:
        if self.net is None or self.features is None:
            raise InvalidTrainingDataError("latent-shift is not trained")
        F, missing = self.features.features(perturbations, on_missing="zeros")
        out = predict_shift(self.net, self.reference, self.standardise(F))
        for i, p in enumerate(perturbations):
            if p in missing:  # no features at all: the mean training effect, reported as a fallback
                out[i] = self.mean_delta
        return out, missing

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"f_mu": self.f_mu, "f_sd": self.f_sd, "reference": self.reference}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.f_mu = np.asarray(arrays["f_mu"], np.float32)
        self.f_sd = np.asarray(arrays["f_sd"], np.float32)
        self.reference = np.asarray(arrays["reference"], np.float32)

    def _save_extra(self, folder: Path) -> None:
        if self.net is None:
            raise InvalidTrainingDataError("latent-shift is not trained: nothing to save")
        torch.save(self.net.state_dict(), folder / "weights.pt")

    def _load_extra(self, folder: Path) -> None:
        net = self.new_net()
        try:
            state = torch.load(io.BytesIO((folder / "weights.pt").read_bytes()), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.UnpicklingError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ArtifactError(f"cannot load latent-shift weights in {folder}: {reason}") from None
        self.net = net.eval()
