"""The classical mitosis detector, scored against the digital twin's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition._mitosis import Detection, detect_mitoses
from acquisition.twin import TwinConfig, TwinSample

MATCH_PX = 6.0  # a detection within ~4 µm of a mitotic cell's centre found it
FIELDS = [(1500.0 * k, -800.0 * (k % 3)) for k in range(10)]


@pytest.fixture(scope="module")
def sample() -> TwinSample:
    s = TwinSample(TwinConfig(seed=11, time_scale=0))
    s.advance(4000.0)  # well into the run: daughters, crowding, cells in every phase
    return s


def _score(sample: TwinSample, detections: list[Detection], x: float, y: float) -> tuple[int, int, int]:
    """True positives, false positives, false negatives for one field."""
    cfg = sample.config
    # mitotic cells just outside the frame show partly: a detection of one is not a false positive
    truth = sample.cells_in_view(x, y, margin_um=10.0)
    mitotic = truth["in_mitosis"]
    rows, cols = truth["row"][mitotic], truth["col"][mitotic]
    inside = (rows >= 0) & (rows < cfg.height) & (cols >= 0) & (cols < cfg.width)
    found = np.zeros(rows.size, dtype=bool)
    tp = fp = 0
    for d in detections:
        dist = np.hypot(rows - d.y, cols - d.x)
        free = np.where(found, np.inf, dist)
        j = int(np.argmin(free)) if free.size else -1
        if j >= 0 and free[j] <= MATCH_PX:
            found[j] = True
            tp += int(inside[j])
        else:
            fp += 1
    return tp, fp, int((inside & ~found).sum())


@pytest.mark.parametrize(("exposure_ms", "power_pct"), [(20.0, 50.0), (100.0, 60.0)])
def test_finds_the_dividing_cells(sample: TwinSample, exposure_ms: float, power_pct: float) -> None:
    tp = fp = fn = 0
    for x, y in FIELDS:
        img, _ = sample.render(
            x_um=x, y_um=y, z_um=sample.focal_plane_um(x, y), exposure_ms=exposure_ms, power_pct=power_pct
        )
        a, b, c = _score(sample, detect_mitoses(img), x, y)
        tp, fp, fn = tp + a, fp + b, fn + c
    assert tp + fn >= 15, "too few mitoses in view to judge the detector"
    assert tp / (tp + fn) >= 0.8  # recall
    assert tp / max(tp + fp, 1) >= 0.8  # precision


def test_no_detections_without_mitoses(sample: TwinSample) -> None:
    for k in range(60):
        x, y = -2000.0 - 700.0 * k, 3000.0
        truth = sample.cells_in_view(x, y, margin_um=15.0)
        if truth["ids"].size >= 15 and not truth["in_mitosis"].any():
            break
    else:
        pytest.fail("no field without mitoses found")
    img, _ = sample.render(x_um=x, y_um=y, z_um=sample.focal_plane_um(x, y))
    assert detect_mitoses(img) == []
    # the same field in a stronger light: still none (the threshold is relative to the interphase nuclei)
    img, _ = sample.render(x_um=x, y_um=y, z_um=sample.focal_plane_um(x, y), exposure_ms=120.0, power_pct=60.0)
    assert detect_mitoses(img) == []


def test_detections_are_ordered_and_located(sample: TwinSample) -> None:
    x, y = FIELDS[0]
    img, _ = sample.render(x_um=x, y_um=y, z_um=sample.focal_plane_um(x, y))
    found = detect_mitoses(img)
    assert found
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for d in found:
        assert 0 <= d.y < img.shape[0]
        assert 0 <= d.x < img.shape[1]
        assert d.score >= 1.7
        assert d.area_px > 0
    # nothing in the twin is ten times brighter than interphase chromatin
    strict = detect_mitoses(img, min_score=10.0)
    assert strict == []


def test_rejects_bad_input_and_blank_frames() -> None:
    with pytest.raises(ValueError, match="2-D"):
        detect_mitoses(np.zeros((2, 8, 8), np.uint16))
    rng = np.random.default_rng(0)
    assert detect_mitoses(np.full((256, 256), 100, np.uint16)) == []
    noise = (100 + 2 * rng.standard_normal((256, 256))).astype(np.uint16)
    assert detect_mitoses(noise) == []
