"""Train/test splits of a perturbation screen: held-out perturbations, held-out cells, a held-out replicate.

Controls are not what is held out: every split keeps control cells on both sides, and evaluation matches
controls to the held-out cells by replicate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from models._data import PerturbData
from models._errors import InvalidTrainingDataError

__all__ = ["Split", "SplitKind", "make_split"]

SplitKind = Literal["perturbation", "cells", "replicate"]


@dataclass(frozen=True)
class Split:
    """Which perturbations (and, for cell/replicate splits, which cells) are held out."""

    kind: SplitKind
    train_perturbations: tuple[str, ...]
    test_perturbations: tuple[str, ...]
    seed: int = 0
    cell_fraction: float = 0.0
    replicate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["train_perturbations"] = list(self.train_perturbations)
        out["test_perturbations"] = list(self.test_perturbations)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(
            kind=d["kind"],
            train_perturbations=tuple(d["train_perturbations"]),
            test_perturbations=tuple(d["test_perturbations"]),
            seed=int(d.get("seed", 0)),
            cell_fraction=float(d.get("cell_fraction", 0.0)),
            replicate=d.get("replicate"),
        )

    def _test_cells(self, data: PerturbData) -> np.ndarray:
        if self.kind == "perturbation":
            return np.isin(data.perturbation, list(self.test_perturbations))
        if self.kind == "replicate":
            return np.asarray(data.replicate == self.replicate) & ~data.is_control
        rng = np.random.default_rng(self.seed)
        return (rng.random(data.n_cells) < self.cell_fraction) & ~data.is_control

    def apply(self, data: PerturbData) -> tuple[PerturbData, PerturbData]:
        """(train, test): test holds the held-out cells plus the controls they are compared against."""
        test = self._test_cells(data)
        ctrl = data.is_control
        if self.kind == "replicate":  # controls of the held-out replicate stay with it
            held = np.asarray(data.replicate == self.replicate)
            return data.subset(~test & ~(ctrl & held)), data.subset(test | (ctrl & held))
        return data.subset(~test), data.subset(test | ctrl)


def make_split(
    data: PerturbData,
    *,
    kind: SplitKind = "perturbation",
    holdout: list[str] | None = None,
    fraction: float = 0.2,
    seed: int = 0,
    replicate: str | None = None,
) -> Split:
    """A split of `data`; for held-out perturbations either `holdout` (names) or a seeded `fraction`."""
    perts = data.perturbations
    if kind == "perturbation":
        if holdout:
            unknown = sorted(set(holdout) - set(perts))
            if unknown:
                raise InvalidTrainingDataError(
                    f"held-out perturbation(s) not in the dataset: {', '.join(unknown)} (have {len(perts)})"
                )
            test = sorted(set(holdout))
        else:
            if not 0 < fraction < 1:
                raise InvalidTrainingDataError(f"holdout fraction must be in (0, 1), got {fraction}")
            rng = np.random.default_rng(seed)
            n = min(max(1, round(fraction * len(perts))), len(perts) - 1)
            test = sorted(rng.choice(perts, size=n, replace=False).tolist())
        train = [p for p in perts if p not in set(test)]
        if not train:
            raise InvalidTrainingDataError("every perturbation is held out: nothing left to train on")
        return Split("perturbation", tuple(train), tuple(test), seed=seed)
    if kind == "replicate":
        reps = [r for r in data.replicates if r]
        if len(reps) < 2:
            raise InvalidTrainingDataError("a replicate split needs a replicate (bio_rep-like) column with 2+ values")
        chosen = replicate or reps[-1]
        if chosen not in reps:
            raise InvalidTrainingDataError(f"no replicate {chosen!r} (have {', '.join(reps)})")
        return Split("replicate", tuple(perts), tuple(perts), seed=seed, replicate=chosen)
    if not 0 < fraction < 1:
        raise InvalidTrainingDataError(f"held-out cell fraction must be in (0, 1), got {fraction}")
    return Split("cells", tuple(perts), tuple(perts), seed=seed, cell_fraction=fraction)
