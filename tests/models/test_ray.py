"""Ray on this machine: a 2-worker training on the local Ray the command starts, killed after a checkpoint, resumes
from it; `--tune` scores its trials on validation perturbations drawn from the training ones. (`--tune` and
`--ray-address` against a cluster started with the Ray CLI: test_ray_cluster.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import lake
from models import LatentShift, build_gene_features, list_models, load_perturb_data, make_split, resolve
from models._ray import checkpointed_epoch
from models._tune import _payload, validation_perturbations
from tests.conftest import CELLFARM, run_cli
from tests.models.conftest import HOLDOUT, kill_session, session_processes

# An epoch here takes ~0.7 s, so with 2 epochs the kill, which waits to see the first checkpoint, came after the
# last one on a loaded CI box; the time of a run is Ray's start, not its epochs.
EPOCHS = 6


def _train_args(*extra: str) -> list[str]:
    return ["train", "latent-shift", "--dataset", "papalexi2021", "--holdout-perturbations", ",".join(HOLDOUT), *extra]


def _wait_for_checkpoint(runs: Path, proc: subprocess.Popen[bytes], log: Path, *, timeout: float) -> Path:
    """The run folder once Ray Train has registered a checkpoint of epoch >= 1 (what a restart restores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended ({proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
        for run in runs.glob("latent-shift-*"):
            if checkpointed_epoch(run) >= 1:
                return run
        time.sleep(0.1)
    pytest.fail(f"no checkpoint within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _wait_until_gone(sid: int, *, timeout: float) -> list[str]:
    """The names of the processes of session `sid` still running after `timeout` seconds (or fewer, once none)."""
    deadline = time.monotonic() + timeout
    while (alive := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _names(alive)


def _names(procs: list[psutil.Process]) -> list[str]:
    names = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it may just have exited
            names.append(proc.name())
    return sorted(names)


def test_killed_training_resumes_from_its_checkpoint(model_lake: lake.Lake, tmp_path: Path) -> None:
    root = Path(model_lake.root)
    before = model_lake.version("models")
    args = _train_args("--workers", "2", "--epochs", str(EPOCHS))
    env = {k: v for k, v in os.environ.items() if k != "CELLFARM_LAKE"}  # as `run_cli` runs it below
    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        # its own session: the CLI, the local Ray it starts and Ray's workers can all be found and killed
        proc = subprocess.Popen(
            [str(CELLFARM), "--lake", str(root), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            run = _wait_for_checkpoint(root / "_state" / "ray", proc, log, timeout=240)
            running = set(_names(session_processes(proc.pid)))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the local Ray processes that share its group
            proc.wait()
            lingering = _wait_until_gone(proc.pid, timeout=30)
            kill_session(proc.pid)  # whatever lingers is killed by pid: the next run must not meet it
    # the session did hold the local Ray and its train workers (names are cut to 15 characters at times) ...
    assert {"raylet", "gcs_server"} <= running, running
    assert any(name.startswith("ray::RayTrain") for name in running), running
    # ... and the workers, in process groups of their own, exited by themselves once their raylet was gone
    assert lingering == [], lingering
    saved = checkpointed_epoch(run)  # read after the kill: exactly what the restart restores
    assert 1 <= saved < EPOCHS, log.read_text()[-3000:]
    assert model_lake.version("models") == before  # killed before registering: nothing in the registry
    assert list_models(model_lake, "latent-shift") == []

    again = run_cli(*args, lake_dir=root, check=True)
    output = again.stdout + again.stderr
    assert f"resuming from epoch {saved}/{EPOCHS}" in output, output[-3000:]
    assert f"epoch {saved}/{EPOCHS} loss" not in output  # the saved epochs are not trained again
    rec = resolve(model_lake, "latent-shift")
    assert rec.metrics["fit"]["resumed_from_epoch"] == saved
    assert rec.metrics["fit"]["epoch"] == EPOCHS
    assert [r.version for r in list_models(model_lake, "latent-shift")] == [1]
    assert model_lake.version("models") == before + 1  # one commit: the registration
    assert rec.trained_on["workers"] == 2
    pred, fallbacks = rec.load().predict_delta(HOLDOUT)
    assert np.isfinite(pred).all()
    assert fallbacks == ["CUL3"]  # no HPA entry and not in the panel: the mean effect, reported


def test_tune_trials_never_fit_their_validation_perturbations(model_lake: lake.Lake) -> None:
    data = load_perturb_data(model_lake, "papalexi2021")
    train, _ = make_split(data, holdout=HOLDOUT).apply(data)
    features = build_gene_features(model_lake, data)
    validation = validation_perturbations(train, features, seed=0)
    assert validation == validation_perturbations(train, features, seed=0)  # seeded: a rerun scores the same set
    assert set(validation) < set(train.perturbations)
    assert all(features.representable(p) for p in validation)  # a featureless one could not rank configs
    payload = _payload(train, features, LatentShift(seed=0).params, validation, epochs=1)
    assert len(payload.truth) == len(payload.features) == len(validation)
    # the trials' training arrays hold one feature row per remaining perturbation, and none of the validation cells
    assert len(payload.arrays["features"]) == len(train.perturbations) - len(validation)
    assert len(payload.arrays["X"]) <= int((~np.isin(train.perturbation, validation)).sum())
