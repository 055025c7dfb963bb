"""Scoring a mitosis detector against ground truth: centroid matching within a radius."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["MATCH_RADIUS_PX", "Located", "Scores", "evaluate", "match_detections", "scores_from_counts"]

MATCH_RADIUS_PX = 6.0  # a detection within ~4 µm (at 0.65 µm/px) of a mitotic cell's centre found it


class Located(Protocol):
    """Anything with a centroid: `acquisition.Detection` and the imaging model's detections."""

    @property
    def y(self) -> float: ...

    @property
    def x(self) -> float: ...


class Scores(NamedTuple):
    precision: float
    recall: float
    f1: float


def match_detections(
    detections: Sequence[Located],
    truth: npt.ArrayLike,
    shape: tuple[int, int],
    *,
    radius_px: float = MATCH_RADIUS_PX,
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one frame.

    `truth` is (k, 2) (row, col). Pairs are matched one to one, closest first (greedy on distance), within
    `radius_px`. A true centroid outside the frame (a cell cut by the edge) is "don't care": matching it
    is neither a hit nor a false alarm, and missing it is not a miss.
    """
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    inside = (t[:, 0] >= 0) & (t[:, 0] < h) & (t[:, 1] >= 0) & (t[:, 1] < w)
    d = np.array([[det.y, det.x] for det in detections], dtype=np.float64).reshape(-1, 2)
    det_used = np.zeros(d.shape[0], dtype=bool)
    true_used = np.zeros(t.shape[0], dtype=bool)
    if d.size and t.size:
        dist = np.hypot(d[:, None, 0] - t[None, :, 0], d[:, None, 1] - t[None, :, 1])
        for flat in np.argsort(dist, axis=None, kind="stable"):
            i, j = divmod(int(flat), t.shape[0])
            if dist[i, j] > radius_px:
                break
            if not (det_used[i] or true_used[j]):
                det_used[i] = true_used[j] = True
    tp = int(np.count_nonzero(true_used & inside))
    matched_outside = int(np.count_nonzero(true_used & ~inside))
    fp = int(d.shape[0]) - tp - matched_outside
    fn = int(np.count_nonzero(inside & ~true_used))
    return tp, fp, fn


def scores_from_counts(tp: int, fp: int, fn: int) -> Scores:
    """Precision, recall, F1 from counts; an empty denominator scores 1 (nothing claimed, nothing missed)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1)


def evaluate(
    detector: Callable[[npt.NDArray[Any]], Sequence[Located]],
    frames: Sequence[npt.NDArray[Any]] | npt.NDArray[Any],
    truth: Sequence[npt.ArrayLike],
    *,
    radius_px: float = MATCH_RADIUS_PX,
) -> Scores:
    """Precision, recall and F1 of `detector` over `frames`, pooled over all frames.

    `detector` is any callable image -> detections with `.y`, `.x` (an `ImagingMitosisDetector`,
    `acquisition.detect_mitoses`, ...); `truth[k]` holds frame k's mitotic centroids, (k, 2) row/col, where
    centroids outside the frame are "don't care" (see `match_detections`).
    """
    if len(frames) != len(truth):
        raise ValueError(f"{len(frames)} frames but truth for {len(truth)}")
    tp = fp = fn = 0
    for img, t in zip(frames, truth, strict=True):
        a, b, c = match_detections(detector(img), t, (int(img.shape[0]), int(img.shape[1])), radius_px=radius_px)
        tp, fp, fn = tp + a, fp + b, fn + c
    return scores_from_counts(tp, fp, fn)
