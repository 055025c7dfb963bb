"""Train, score, register and gate the mitosis CNN in one call: what the demo and the Dagster asset both run.

The plates (the digital twin) and the baseline (the classical detector) are injected: `models` does not import
`acquisition`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lake
from models._registry import ModelRecord, set_stage
from models.imaging._data import PlateFactory
from models.imaging._registry import Detector, detector_gate, heldout_metrics, register_detector
from models.imaging._train import TrainProgress, train_mitosis_model

__all__ = ["DetectorRelease", "release_detector"]


@dataclass(frozen=True)
class DetectorRelease:
    """The registered version, whether it passed the gate (then it is in production when promotion was asked), why."""

    record: ModelRecord
    passed: bool
    why: str


def release_detector(
    target: lake.Lake,
    out_dir: str | Path,
    *,
    plates: PlateFactory,
    baseline: Detector,
    promote: bool = True,
    heldout_frames: int = 20,
    progress: Callable[[TrainProgress], None] | None = None,
    **train_options: Any,
) -> DetectorRelease:
    """Train on `plates`, score `heldout_frames` fields of each held-out plate and light against `baseline`,
    register, and promote past the gate."""
    det = train_mitosis_model(out_dir, plates=plates, progress=progress, **train_options)
    metrics = heldout_metrics(det, plates, n_frames=heldout_frames, baseline=baseline)
    record = register_detector(target, det, metrics=metrics)
    passed, why = detector_gate(record)
    if passed and promote:
        record = set_stage(target, record, "production")
    return DetectorRelease(record, passed, why)
