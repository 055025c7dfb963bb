"""A frame's QC and its 2x2 binning, taken in one blocked pass, against plain float references."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lake
from acquisition import frame_qc
from acquisition._qc import binned_qc, focus_score


def _reference_binning(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape[0] // 2 * 2, plane.shape[1] // 2 * 2
    mean = plane[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    if plane.dtype.kind == "u":
        return np.floor(mean + 0.5).astype(plane.dtype)  # round half up
    return mean.astype(plane.dtype)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((2048, 2048), np.uint16),
        ((301, 517), np.uint16),  # odd rows and columns, more than two blocks of rows
        ((129, 3), np.uint8),
        ((2, 2), np.uint16),
        ((257, 130), np.float32),
    ],
)
def test_one_pass_gives_the_reference_numbers(shape: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(sum(shape))
    top = 4095 if dtype is np.uint16 else 255
    plane = rng.integers(0, top + 1, shape).astype(dtype)
    plane[-1, -1] = top  # the odd last row and column count in the max and the mean, not in the binning
    bits = 12 if dtype is np.uint16 else None
    binned, qc = binned_qc(plane, bit_depth=bits)
    np.testing.assert_array_equal(binned, _reference_binning(plane))
    np.testing.assert_array_equal(binned, lake.downsample2(plane))
    assert binned.dtype == plane.dtype
    assert qc.max == float(plane.max()) == top
    assert math.isclose(qc.mean, float(plane.astype(np.float64).mean()), rel_tol=1e-12)
    # a float plane never saturates; an integer one at its camera's bit depth, else its dtype's maximum
    assert qc.saturated_frac == (np.count_nonzero(plane >= top) / plane.size if dtype is not np.float32 else 0.0)
    assert qc.focus_score == focus_score(plane, binned=binned)
    assert frame_qc(plane, bit_depth=bits) == qc


def test_saturated_rows_sum_exactly() -> None:
    # rows of 65,536 pixels at 65,535: each row's uint32 sum is just below 2**32, the plane's far above it
    plane = np.full((4, 65_536), 65_535, np.uint16)
    binned, qc = binned_qc(plane)
    assert qc.mean == 65_535.0
    assert qc.saturated_frac == 1.0
    assert (binned == 65_535).all()


def test_planes_too_small_to_bin_are_their_own_level() -> None:
    line = np.arange(5, dtype=np.uint16).reshape(1, 5)
    binned, qc = binned_qc(line)
    assert binned is line
    assert qc.max == 4.0
    assert qc.mean == 2.0
    with pytest.raises(ValueError, match="cannot bin"):
        next(lake.downsample2_blocks(line, np.empty((0, 2), np.uint16)))
