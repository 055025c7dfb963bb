"""Prior knowledge about genes, so that a perturbation never seen in training still has a representation.

Each gene gets: its HPA subcellular locations (main and any, multi-hot) from `hpa_subcellular`, and its
co-expression profile in control cells (the gene's loadings on the top principal components of the
control cells' gene-gene correlation) when it is in the measured panel. A perturbation's features are the sum
over its target genes ("A+B" is A plus B). A target with neither is not representable: `features` says so,
and callers fail or fall back explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

import lake
from models._data import PerturbData
from models._errors import InvalidTrainingDataError

__all__ = ["GeneFeatures", "build_gene_features", "split_targets"]

F32 = npt.NDArray[np.float32]


def split_targets(perturbation: str) -> list[str]:
    """The target genes of a perturbation label: "A+B" -> ["A", "B"]."""
    return [t.strip() for t in perturbation.split("+") if t.strip()]


@dataclass(frozen=True)
class GeneFeatures:
    """A gene (by symbol, upper case) -> feature vector table; `names` describe the columns."""

    symbols: tuple[str, ...]
    matrix: F32
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not np.isfinite(self.matrix).all():
            raise InvalidTrainingDataError("gene features have NaN or infinite values")

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def _index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def representable(self, perturbation: str) -> bool:
        index = self._index()
        return all(t.upper() in index for t in split_targets(perturbation))

    def features(self, perturbations: list[str], *, on_missing: str = "error") -> tuple[F32, list[str]]:
        """(perturbations x dim) features and the perturbations that fell back to zeros (`on_missing="zeros"`)."""
        index = self._index()
        out = np.zeros((len(perturbations), self.dim), np.float32)
        missing: list[str] = []
        for i, p in enumerate(perturbations):
            rows = [index.get(t.upper()) for t in split_targets(p)]
            if any(r is None for r in rows) or not rows:
                if on_missing == "error":
                    raise InvalidTrainingDataError(
                        f"perturbation {p!r}: no gene features for "
                        f"{', '.join(t for t, r in zip(split_targets(p), rows, strict=True) if r is None) or p}"
                        " (not in HPA nor in the measured panel)"
                    )
                missing.append(p)
            out[i] = self.matrix[[r for r in rows if r is not None]].sum(axis=0) if rows else 0.0
        return out, missing

    def to_npz(self) -> dict[str, npt.NDArray[np.generic]]:
        return {
            "feature_symbols": np.array(self.symbols),
            "feature_matrix": self.matrix,
            "feature_names": np.array(self.names),
        }

    @classmethod
    def from_npz(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> GeneFeatures:
        return cls(
            tuple(str(s) for s in arrays["feature_symbols"].tolist()),
            np.asarray(arrays["feature_matrix"], np.float32),
            tuple(str(s) for s in arrays["feature_names"].tolist()),
        )


def _coexpression(data: PerturbData, k: int) -> tuple[list[str], F32]:
    ctrl = data.X[data.is_control]
    std = ctrl.std(axis=0)
    keep = std > 0
    z = (ctrl[:, keep] - ctrl[:, keep].mean(axis=0)) / std[keep]
    corr = (z.T @ z) / max(len(z) - 1, 1)
    vals, vecs = np.linalg.eigh(corr.astype(np.float64))
    top = np.argsort(vals)[::-1][:k]
    loadings = np.zeros((data.n_genes, k), np.float32)
    loadings[keep, : len(top)] = (vecs[:, top] * np.sqrt(np.maximum(vals[top], 0))).astype(np.float32)
    return [s.upper() for s in data.gene_symbols.tolist()], loadings


def build_gene_features(
    target: lake.Lake | None, data: PerturbData, *, coexpr_dims: int = 16, hpa_version: int | None = None
) -> GeneFeatures:
    """Features for every gene in HPA or in the data's panel; `target=None` uses co-expression only."""
    locations: dict[str, set[tuple[str, bool]]] = {}
    if target is not None:
        snap = data.snapshot.delta_versions if data.snapshot else {}
        version = hpa_version if hpa_version is not None else snap.get("hpa_subcellular")
        hpa = target.read("hpa_subcellular", version=version, columns=["symbol", "location", "is_main", "dataset_id"])
        releases = target.datasets(kind="hpa")["dataset_id"].to_pylist()  # oldest first
        if hpa.num_rows and releases:  # the newest release only, as SQL shows it
            hpa = hpa.filter(pc.equal(hpa["dataset_id"], releases[-1]))
        for sym, loc, main in zip(
            hpa["symbol"].to_pylist(), hpa["location"].to_pylist(), hpa["is_main"].to_pylist(), strict=True
        ):
            if sym:
                locations.setdefault(sym.upper(), set()).add((loc, bool(main)))
    all_locs = sorted({loc for v in locations.values() for loc, _ in v})
    panel, coexpr = _coexpression(data, coexpr_dims)
    symbols = sorted(set(locations) | set(panel))
    li = {loc: i for i, loc in enumerate(all_locs)}
    pi = {s: i for i, s in enumerate(panel)}
    n_loc = len(all_locs)
    matrix = np.zeros((len(symbols), 2 * n_loc + coexpr_dims + 2), np.float32)
    for row, sym in enumerate(symbols):
        for loc, main in locations.get(sym, ()):
            matrix[row, n_loc + li[loc]] = 1.0
            if main:
                matrix[row, li[loc]] = 1.0
        if sym in pi:
            matrix[row, 2 * n_loc : 2 * n_loc + coexpr_dims] = coexpr[pi[sym]]
        matrix[row, -2] = float(sym in locations)
        matrix[row, -1] = float(sym in pi)
    names = (
        [f"hpa_main:{loc}" for loc in all_locs]
        + [f"hpa_any:{loc}" for loc in all_locs]
        + [f"coexpr_pc{i}" for i in range(coexpr_dims)]
        + ["in_hpa", "in_panel"]
    )
    return GeneFeatures(tuple(symbols), matrix, tuple(names))
