"""The digital twin as the mitosis CNN's plate factory, and one short training run shared by the modules here."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from acquisition.twin import frozen_plate
from models.imaging import ImagingMitosisDetector, TrainProgress, train_mitosis_model

HELD_OUT_SEED = 7  # neither a training (1000-1007) nor the validation (1999) plate
TINY = {"n_frames": 64, "epochs": 8, "n_val_frames": 32, "seed": 0}


twin_plate = frozen_plate  # the twin's plate `seed`, clock frozen, with a `size` x `size` camera


class Trained(NamedTuple):
    detector: ImagingMitosisDetector
    artifact: Path
    progress: list[TrainProgress]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A short training run (~10 s on 2 idle cores; the default one ~1.5 min), once for every module here."""
    out = tmp_path_factory.mktemp("mitosis") / "cnn"
    progress: list[TrainProgress] = []
    det = train_mitosis_model(out, plates=twin_plate, progress=progress.append, **TINY)  # type: ignore[arg-type]
    return Trained(det, out, progress)
