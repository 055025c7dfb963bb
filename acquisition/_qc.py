"""Per-frame quality control: the numbers every `frames` row carries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lake import downsample2, downsample2_blocks

__all__ = ["FrameQC", "binned_qc", "frame_qc", "saturation_level"]

_BLOCK_ROWS = 64


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
    img = plane if min(plane.shape) < 8 else (binned if binned is not None else downsample2(plane))
    h, w = img.shape[:2]
    if min(h, w) < 3:
        return 0.0
    # Blocks of rows keep the temporaries in cache and below malloc's mmap threshold: four times faster
    # than whole-plane arrays at 2048x2048, where every temporary is a fresh, page-faulted 4 MiB.
    lap = np.empty((_BLOCK_ROWS, w - 2), np.float32)
    sq = total = 0.0
    for r0 in range(1, h - 1, _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, h - 1)
        blk = img[r0 - 1 : r1 + 1].astype(np.float32)
        out = lap[: r1 - r0]
        np.add(blk[1:-1, :-2], blk[1:-1, 2:], out=out)
        out += blk[:-2, 1:-1]
        out += blk[2:, 1:-1]
        out -= 4.0 * blk[1:-1, 1:-1]
        flat = out.ravel()
        sq += float(np.dot(flat, flat))
        total += float(flat.sum(dtype=np.float64))
    n = (h - 2) * (w - 2)
    var = max(sq / n - (total / n) ** 2, 0.0)
    mean = float(img.sum(dtype=np.float64)) / img.size
    return var / (mean * mean) if mean > 0 else 0.0


def _total(plane: np.ndarray) -> float:
    """The exact sum of a plane; for 8/16-bit unsigned planes, as row sums in uint32 (2.3x faster than uint64)."""
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2 and plane.ndim == 2 and plane.shape[1] <= 2**16:
        # a row of at most 65,536 pixels below 2**16 sums below 2**32
        return float(plane.sum(axis=1, dtype=np.uint32).sum(dtype=np.uint64))
    return float(plane.sum(dtype=np.uint64 if plane.dtype.kind == "u" else np.float64))


def binned_qc(plane: np.ndarray, *, bit_depth: int | None = None) -> tuple[np.ndarray, FrameQC]:
    """A plane's 2x2 binning (its pyramid's level 1, and the focus score's input) and its QC, in one pass over it.

    The binning, the maximum and the sum each take a block of rows while it is in cache: a 2048x2048 plane is read
    from memory once instead of three times, memory bandwidth the camera's thread shares on a small machine.
    """
    if plane.ndim != 2 or min(plane.shape) < 2:
        binned, blocks = downsample2(plane), iter([plane])
    else:
        binned = np.empty((plane.shape[0] // 2, plane.shape[1] // 2), plane.dtype)
        blocks = downsample2_blocks(plane, binned)
    top, total = float("-inf"), 0.0
    for block in blocks:
        top = max(top, float(block.max()))
        total += _total(block)
    # counting saturated pixels is skipped when the brightest one is below saturation (the common case)
    sat = saturation_level(plane.dtype, bit_depth)
    n_sat = int(np.count_nonzero(plane >= sat)) if top >= sat else 0
    qc = FrameQC(
        mean=total / plane.size,
        max=top,
        saturated_frac=n_sat / plane.size,
        focus_score=focus_score(plane, binned=binned),
    )
    return binned, qc


def frame_qc(plane: np.ndarray, *, bit_depth: int | None = None) -> FrameQC:
    """The numbers of a plane's `frames` row (`binned_qc` without the binning)."""
    return binned_qc(plane, bit_depth=bit_depth)[1]
