"""`cellfarm train`: the CLI contract and the baselines in process (the learned model on Ray: test_ray.py)."""

from __future__ import annotations

from pathlib import Path

import lake
from models import BASELINES, resolve
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
