"""`cellfarm train`: the CLI contract, baselines in process, the learned model on a local Ray with 2 workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import lake
from models import BASELINES, list_models, resolve
from tests.conftest import run_cli
from tests.models.conftest import HOLDOUT


def test_list_prints_one_kind_per_line() -> None:
    proc = run_cli("train", "--list", check=True)
    kinds = proc.stdout.split()
    assert kinds[:4] == list(BASELINES)
    assert "latent-shift" in kinds


def test_train_baseline_and_bad_input(model_lake: lake.Lake) -> None:
    root = Path(model_lake.root)
    proc = run_cli(
        "train",
        "perturbation-mean",
        "--dataset",
        "papalexi2021",
        "--holdout-perturbations",
        ",".join(HOLDOUT),
        lake_dir=root,
        check=True,
    )
    assert proc.stdout.strip() == "perturbation-mean:1"
    rec = resolve(model_lake, "perturbation-mean")
    assert rec.trained_on["split"]["test_perturbations"] == sorted(HOLDOUT)
    assert rec.trained_on["delta_versions"]["cells"] == model_lake.version("cells")
    assert rec.stage == "candidate"
    before = model_lake.version("models")
    for args, msg in [
        (["linear", "--dataset", "nope"], "no atlas dataset 'nope'"),
        (["linear", "--dataset", "papalexi2021", "--holdout-perturbations", "XYZ"], "not in the dataset: XYZ"),
        (["wavenet", "--dataset", "papalexi2021"], "unknown model kind 'wavenet'"),
    ]:
        bad = run_cli("train", *args, lake_dir=root)
        assert bad.returncode == 1, bad.stderr
        assert msg in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    assert model_lake.version("models") == before  # nothing half-written in the registry


def test_latent_shift_on_ray_with_two_workers(model_lake: lake.Lake) -> None:
    proc = run_cli(
        "train",
        "latent-shift",
        "--dataset",
        "papalexi2021",
        "--holdout-perturbations",
        ",".join(HOLDOUT),
        "--workers",
        "2",
        "--epochs",
        "3",
        lake_dir=Path(model_lake.root),
        check=True,
    )
    assert "epoch 3/3" in proc.stdout + proc.stderr
    rec = resolve(model_lake, "latent-shift")
    assert rec.trained_on["workers"] == 2
    assert rec.metrics["fit"]["epoch"] == 3.0
    model = rec.load()
    pred, fallbacks = model.predict_delta(HOLDOUT)
    assert np.isfinite(pred).all()
    assert fallbacks == ["CUL3"]
    checkpoints = list((Path(model_lake.root) / "_state" / "ray").glob("latent-shift-*/checkpoint_*"))
    assert checkpoints  # per-epoch checkpoints a killed run resumes from
    assert [r.version for r in list_models(model_lake, "latent-shift")] == [1]
