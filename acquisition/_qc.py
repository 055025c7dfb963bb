"""Per-frame quality control: the numbers every `frames` row carries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lake import downsample2

__all__ = ["FrameQC", "frame_qc", "saturation_level"]


@dataclass(frozen=True)
class FrameQC:
    mean: float
    max: float
    saturated_frac: float
    focus_score: float


def saturation_level(dtype: np.dtype | type, bit_depth: int | None = None) -> float:
    """The value a saturated pixel reads: the camera's bit depth when known, else the dtype's maximum."""
    dt = np.dtype(dtype)
    if bit_depth:
        return float(2**bit_depth - 1)
    if dt.kind in "ui":
        return float(np.iinfo(dt).max)
    return float("inf")


def focus_score(plane: np.ndarray, *, binned: np.ndarray | None = None) -> float:
    """Normalised variance of the Laplacian of the 2x-binned plane.

    Binning first halves the cost and the shot noise; dividing by the squared mean makes the score
    independent of exposure and light power, so it compares focus, not brightness.
    """
    if min(plane.shape) < 8:
        img = plane.astype(np.float32)
    else:
        img = (binned if binned is not None else downsample2(plane)).astype(np.float32)
    if min(img.shape) < 3:
        return 0.0
    lap = img[1:-1, :-2] + img[1:-1, 2:] + img[:-2, 1:-1] + img[2:, 1:-1] - 4.0 * img[1:-1, 1:-1]
    mean = float(img.mean())
    return float(lap.var() / (mean * mean)) if mean > 0 else 0.0


def frame_qc(plane: np.ndarray, *, bit_depth: int | None = None, binned: np.ndarray | None = None) -> FrameQC:
    sat = saturation_level(plane.dtype, bit_depth)
    top = float(plane.max())
    # integer sums are exact and several times faster than a float mean; counting saturated pixels is skipped
    # when the brightest one is below saturation (the common case)
    total = float(plane.sum(dtype=np.uint64 if plane.dtype.kind == "u" else np.float64))
    n_sat = int(np.count_nonzero(plane >= sat)) if top >= sat else 0
    return FrameQC(
        mean=total / plane.size,
        max=top,
        saturated_frac=n_sat / plane.size,
        focus_score=focus_score(plane, binned=binned),
    )
