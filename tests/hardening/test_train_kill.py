"""SIGKILL of `cellfarm train` in the registration window: its artifact is saved, its `models` row is not.

The registry's commit point is the row: the kill leaves an unregistered folder that no reader sees, and the next
run registers the same version over it. (A learned model killed mid-training resumes from its checkpoint:
tests/models/test_ray.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import lake
from lake.synthetic import write_perturbseq_h5ad
from models import list_models, resolve
from tests.conftest import CELLFARM, run_cli

KIND = "perturbation-mean"


@pytest.mark.slow
def test_train_killed_between_artifact_and_registry_commit(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    target = lake.Lake.open(lake_dir)
    atlas = write_perturbseq_h5ad(tmp_path / "syn.h5ad", n_cells=3000, n_genes=200, seed=4)
    lake.ingest_atlas(target, atlas, name="syn")
    before = target.version("models")
    artifact = lake_dir / "models" / KIND / "1"
    args = ["train", KIND, "--dataset", "syn"]
    env = {k: v for k, v in os.environ.items() if k != "CELLFARM_LAKE"}
    proc = subprocess.Popen(
        [str(CELLFARM), "--lake", str(lake_dir), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not artifact.exists():  # renamed into place whole: then the registry commit starts
            assert proc.poll() is None, f"train ended ({proc.returncode}) before its artifact was seen"
            assert time.monotonic() < deadline, "no artifact within 120 s"
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)
        registered = target.version("models") != before  # read while it is stopped: exactly what the kill leaves
    finally:
        proc.send_signal(signal.SIGKILL)  # a no-op for a process already reaped
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert artifact.is_dir()
    if registered:  # the commit won the race against the poll (a loaded box): then it is whole
        assert [r.version for r in list_models(target)] == [1]
        assert resolve(target, KIND).load() is not None
    else:  # nothing half-registered is visible: no row, no version, and SQL agrees
        assert target.version("models") == before
        assert list_models(target) == []
        assert lake.query(target, "SELECT count(*) AS n FROM models").to_pylist() == [{"n": 0}]
    expected = 2 if registered else 1
    print(f"\nkilled {'after' if registered else 'before'} the registry commit, with the artifact on disk")

    again = run_cli(*args, lake_dir=lake_dir, check=True)
    # the same version, registered over the leftover folder (or the next one, when the kill came too late)
    assert again.stdout.strip() == f"{KIND}:{expected}"
    rec = resolve(target, KIND)
    assert [r.version for r in list_models(target)] == list(range(1, expected + 1))
    assert rec.artifact_uri == str(artifact.parent / str(expected))
    assert sorted(p.name for p in artifact.parent.iterdir()) == [str(v) for v in range(1, expected + 1)]
    held_out = rec.trained_on["split"]["test_perturbations"]
    assert held_out
    pred, _ = rec.load().predict_delta(held_out)
    assert pred.shape[0] == len(held_out)
    assert np.isfinite(pred).all()
