"""`model_mitosis_cnn`: a short real training on twin plates, registered, gated and checked like every model."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import lake
import models
from dagster_project.resources import LakeResource
from dagster_project.training.checks import TRAINING_CHECKS
from dagster_project.training.imaging_model import model_mitosis_cnn
from models.imaging import detector_gate
from tests.dagster_project.conftest import checks_of, metadata_of

# ~10 s of training on 2 idle cores (the default ~1.5 min), a gate scored on 8 fields per plate and light
SHORT = {"n_frames": 64, "epochs": 8, "n_val_frames": 32, "heldout_frames": 8, "seed": 0}


def test_the_imaging_model_is_trained_registered_and_gated(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    checks = [c for c in TRAINING_CHECKS if any(k.asset_key == dg.AssetKey("model_mitosis_cnn") for k in c.check_keys)]
    result = dg.materialize(
        [model_mitosis_cnn, *checks],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"lake": LakeResource(root=str(root))},
        run_config={"ops": {"model_mitosis_cnn": {"config": SHORT}}},
    )
    assert result.success
    meta = metadata_of(result, "model_mitosis_cnn")
    record = models.resolve(lake.Lake.open(root), meta["model"])
    assert record.kind == "mitosis-cnn"
    assert record.trained_on["n_frames"] == SHORT["n_frames"]
    passed, why = detector_gate(record)
    assert meta["gate"] == ("passed" if passed else "refused")
    assert meta["gate_reason"] == why
    assert record.stage == ("production" if passed else "candidate")
    for key in ("precision", "recall", "dim_recall", "baseline_dim_recall"):
        assert meta[key] == record.metrics[key]
    assert meta["dim_recall"] > meta["baseline_dim_recall"]  # what the CNN is for: dim light
    assert checks_of(result) == {"models_schema": True, "models_rows": True, "models_keys_unique": True}
