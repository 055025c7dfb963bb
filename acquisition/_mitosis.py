"""A classical detector of dividing cells in nuclear-marker (H2B-GFP) images.

Mitotic chromatin is condensed: a nucleus in mitosis is smaller and markedly brighter than the interphase
nuclei around it. The detector measures the image's own interphase level (so exposure, light power and
bleaching cancel out) and keeps compact spots well above it:

1. background: medians of coarse blocks, interpolated (handles uneven illumination), then subtracted;
2. light Gaussian smoothing; noise from the median absolute deviation (most pixels are background);
3. foreground = smoothed signal above 6 noise sigmas; the interphase level is the median of the
   foreground objects' peaks (mitotic cells are a small minority);
4. bright cores = connected pixels above 0.75 * `min_score` times the interphase level; a core is a
   mitosis if its peak is at least `min_score` times the interphase level and its area is well below a
   typical nucleus' (condensed, not merely a brightly expressing interphase nucleus). In an integer image
   clipped at full scale (2**k - 1), a compact core that reaches the clip level counts whatever its score:
   clipping hides how bright it is. Once the interphase nuclei saturate too, nothing can be told apart.

No knowledge of the digital twin beyond the image: it works on any 2-D fluorescence frame with nuclei of
a few pixels' radius.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

__all__ = ["Detection", "DetectionLike", "detect_mitoses"]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class Detection:
    """A dividing cell: centroid in pixel coordinates, score = peak / interphase level, area in pixels."""

    y: float
    x: float
    score: float
    area_px: int


class DetectionLike(Protocol):
    """What a policy reads from a detection: `Detection`, or any detector's own record with these fields.

    Structural, so that a detector from another package (the trained imaging model) need not import this one.
    """

    @property
    def y(self) -> float: ...

    @property
    def x(self) -> float: ...

    @property
    def score(self) -> float: ...

    @property
    def area_px(self) -> int: ...


def _interp_matrix(n_out: int, n_in: int) -> npt.NDArray[np.float32]:
    """Linear interpolation from `n_in` block centres to `n_out` pixels, as a (n_out, n_in) matrix."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(np.int64), 0, max(n_in - 2, 0))
    frac = np.clip(pos - lo, 0.0, 1.0) if n_in > 1 else np.zeros(n_out)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += frac
    return m


def _background(img: npt.NDArray[np.float32], block: int) -> npt.NDArray[np.float32]:
    """Smooth background from block medians (cells cover a small part of each block), bilinear in between."""
    h, w = img.shape
    gh, gw = max(1, h // block), max(1, w // block)
    bh, bw = h // gh, w // gw
    # every other pixel is plenty for a median, and halves the cost
    blocks = img[: gh * bh : 2, : gw * bw : 2].reshape(gh, (bh + 1) // 2, gw, (bw + 1) // 2).swapaxes(1, 2)
    grid = np.median(blocks.reshape(gh, gw, -1), axis=2).astype(np.float32)
    bg: npt.NDArray[np.float32] = (_interp_matrix(h, gh) @ grid @ _interp_matrix(w, gw).T).astype(
        np.float32, copy=False
    )
    return bg


def _regions(
    mask: npt.NDArray[np.bool_], values: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Connected regions of `mask`: per-pixel label and flat index of the masked pixels, areas, peaks.

    Works on the masked pixels only (a few percent of the frame), which is much faster than
    `ndimage.maximum` with an index over the whole frame.
    """
    labels, n = ndi.label(mask)
    flat = np.flatnonzero(labels)
    labs = labels.ravel()[flat].astype(np.int64)
    areas = np.bincount(labs, minlength=n + 1)[1:]
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, labs, values.ravel()[flat])
    return labs, flat, areas, peaks[1:]


def _saturation_level(dtype: np.dtype[Any], img: npt.NDArray[np.float32]) -> float | None:
    """The clip level of an integer image whose maximum is a full-scale value (2**k - 1) hit by several pixels."""
    if not np.issubdtype(dtype, np.integer):
        return None
    top = float(img.max())
    if top < 255 or (int(top) + 1) & int(top) != 0:
        return None
    return top if int(np.count_nonzero(img >= top)) >= 3 else None


def detect_mitoses(
    image: npt.ArrayLike,
    *,
    min_score: float = 1.7,
    sigma_px: float = 1.0,
    min_area_px: int = 6,
    max_area_fraction: float = 0.6,
    block_px: int = 32,
) -> list[Detection]:
    """Find condensed, bright nuclei (cells in mitosis) in a 2-D nuclear-marker image.

    Parameters
    ----------
    image
        2-D intensity image (any numeric dtype).
    min_score
        Minimum peak brightness relative to the image's interphase nuclei (condensed mitotic chromatin is
        ~2-3x; interphase nuclei are ~1).
    sigma_px
        Smoothing before thresholding, in pixels.
    min_area_px
        Smaller bright spots are noise.
    max_area_fraction
        A detection's bright core must be smaller than this fraction of a typical nucleus' area.
    block_px
        Block size of the background estimate; larger than a cell.

    Returns detections sorted by decreasing score.
    """
    raw = np.asarray(image)
    img = raw.astype(np.float32, copy=False)
    if img.ndim != 2:
        raise ValueError(f"detect_mitoses takes a 2-D image, not shape {img.shape}")
    if img.size == 0:
        return []
    sm = ndi.gaussian_filter(img - _background(img, block_px), sigma_px)

    sub = sm[::2, ::2]
    center = float(np.median(sub))
    # a floor for flat, noiseless frames, relative to the frame's range (any units)
    floor = 1e-4 * (float(img.max()) - float(img.min())) + 1e-12
    noise = max(_MAD_TO_SIGMA * float(np.median(np.abs(sub - center))), floor)
    sm -= center
    _, _, fg_areas, fg_peaks = _regions(sm > 6.0 * noise, sm)
    real = fg_areas >= min_area_px
    if not real.any():
        return []
    level = float(np.median(fg_peaks[real]))  # the interphase nuclei's brightness in this image
    nucleus_area = float(np.median(fg_areas[real]))
    if level <= 0:
        return []

    # Bright cores: cut above the interphase plateau, so a mitotic cell touching a neighbour stays apart,
    # yet low enough to hold most of a dim mitotic blob.
    labs, flat, areas, peaks = _regions(sm > 0.75 * min_score * level, sm)
    scores = peaks / level
    compact = (areas >= min_area_px) & (areas <= max_area_fraction * nucleus_area)
    bright = scores >= min_score
    if (sat := _saturation_level(raw.dtype, img)) is not None:
        # A clipped peak understates the score: a compact core that reaches the clip level still counts.
        clipped = np.zeros(areas.size + 1, dtype=bool)
        clipped[labs[img.ravel()[flat] >= sat]] = True
        bright |= clipped[1:]
    keep = compact & bright
    if not keep.any():
        return []
    # intensity-weighted centroids of the kept cores
    n = areas.size
    weights = sm.ravel()[flat].astype(np.float64)
    rows, cols = np.divmod(flat, sm.shape[1])
    wsum = np.bincount(labs, weights, minlength=n + 1)[1:]
    cy = np.bincount(labs, weights * rows, minlength=n + 1)[1:] / wsum
    cx = np.bincount(labs, weights * cols, minlength=n + 1)[1:] / wsum
    found = [
        Detection(y=float(cy[i]), x=float(cx[i]), score=float(scores[i]), area_px=int(areas[i]))
        for i in np.flatnonzero(keep)
    ]
    found.sort(key=lambda d: -d.score)
    return found


def nuclei_above_noise(img: npt.NDArray[Any]) -> bool:
    """Whether compact bright blocks stand above the noise: a dim field with cells is not an empty one.

    A frame of a few photo-electrons per pixel shows no contrast on the full scale, yet a learned detector
    still finds mitoses in it. 8 x 8 block means are 8 times less noisy than pixels, so a nucleus stands
    well above their noise, while noise alone almost never reaches 5 sigmas.
    """
    k = 8
    h, w = img.shape[0] // k, img.shape[1] // k
    if h == 0 or w == 0:
        return False
    blocks = img[: h * k, : w * k].astype(np.float32).reshape(h, k, w, k).mean(axis=(1, 3))
    blocks -= np.float32(np.median(blocks))
    sigma = 1.4826 * float(np.median(np.abs(blocks)))
    bright = int(np.count_nonzero(blocks > max(5.0 * sigma, 1e-3)))
    return bright >= 4  # a nucleus covers a few blocks
