"""Ray: a killed training resumes from its checkpoint (local Ray); a `--tune` search, scored on a validation split of
the training perturbations, then a 2-worker fit, against a Ray head started with the Ray CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pyarrow.compute as pc
import pytest

import lake
from models import LatentShift, build_gene_features, list_models, load_perturb_data, make_split, resolve
from models._ray import checkpointed_epoch
from models._tune import _payload, validation_perturbations
from tests.conftest import CELLFARM, run_cli
from tests.models.conftest import HOLDOUT, RayHead, kill_session, session_processes

EPOCHS = 4


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
    pred, _ = rec.load().predict_delta(HOLDOUT)
    assert np.isfinite(pred).all()


@dataclass(frozen=True)
class HeadRun:
    proc: subprocess.CompletedProcess[str]
    drivers_before: int


@pytest.fixture(scope="module")
def tuned_on_head(model_lake: lake.Lake, ray_head: RayHead) -> HeadRun:
    """One command for two tests (a Ray run costs tens of seconds here): a `--tune` search and then a 2-worker
    Ray Train fit, both on the head."""
    drivers = len(ray_head.driver_logs())
    args = _train_args(
        "--tune", "--tune-trials", "2", "--workers", "2", "--ray-address", ray_head.address, "--epochs", "2"
    )
    proc = run_cli(*args, "--name", "on-head", lake_dir=Path(model_lake.root), **ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return HeadRun(proc, drivers)


def test_train_against_a_ray_head(model_lake: lake.Lake, ray_head: RayHead, tuned_on_head: HeadRun) -> None:
    assert tuned_on_head.proc.stdout.strip() == "on-head:1"  # progress goes to stderr, the result to stdout
    assert len(ray_head.driver_logs()) == tuned_on_head.drivers_before + 1  # ran on that cluster, not a local Ray
    assert "[cellfarm train] epoch 2/2" in tuned_on_head.proc.stderr
    rec = resolve(model_lake, "on-head")
    assert rec.trained_on["ray_address"] == ray_head.address
    assert rec.trained_on["workers"] == 2
    assert rec.metrics["fit"]["epoch"] == 2.0
    assert rec.metrics["fit"]["resumed_from_epoch"] == 0.0
    pred, fallbacks = rec.load().predict_delta(HOLDOUT)
    assert pred.shape[0] == len(HOLDOUT)
    assert np.isfinite(pred).all()
    assert fallbacks == ["CUL3"]


def test_tune_scores_trials_on_a_validation_split(model_lake: lake.Lake, tuned_on_head: HeadRun) -> None:
    assert "[cellfarm tune] trial 2/2 epoch 2/2" in tuned_on_head.proc.stderr
    rec = resolve(model_lake, "on-head")
    tune = rec.metrics["tune"]
    trials = tune["trials"]
    assert len(trials) == 2
    assert all(np.isfinite(t["pearson_delta"]) and np.isfinite(t["mse_delta"]) for t in trials), trials
    assert all(t["epochs"] == 2 for t in trials)
    assert trials[0]["config"] == {"lr": 1e-3, "latent": 32, "hidden": 128}  # the defaults are always a trial
    best = max(trials, key=lambda t: t["pearson_delta"])
    assert tune["best"]["config"] == best["config"]
    assert {k: rec.params[k] for k in ("lr", "latent", "hidden")} == best["config"]  # the final fit used it
    assert np.isfinite(tune["mean_effect_baseline"]["pearson_delta"])  # the yardstick the trials are read against
    split = rec.trained_on["split"]
    validation = set(tune["validation_perturbations"])
    assert validation
    assert validation <= set(split["train_perturbations"])
    assert not validation & set(split["test_perturbations"])

    before = model_lake.version("models")
    bad = run_cli("train", "linear", "--dataset", "papalexi2021", "--tune", lake_dir=Path(model_lake.root))
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--tune" in bad.stderr
    assert "baseline" in bad.stderr
    assert model_lake.version("models") == before


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


def test_evaluate_against_a_ray_head(model_lake: lake.Lake, ray_head: RayHead, tuned_on_head: HeadRun) -> None:
    drivers = len(ray_head.driver_logs())
    proc = run_cli(
        "evaluate",
        "on-head:1",
        "--baselines",
        "control-mean",
        "--ray-address",
        ray_head.address,
        lake_dir=Path(model_lake.root),
        **ray_head.env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(ray_head.driver_logs()) == drivers + 1  # cell-eval's tasks ran on that cluster
    ev = resolve(model_lake, "on-head:1").metrics["evaluation"]
    assert ev["perturbations"] == sorted(HOLDOUT)
    assert list(ev["baselines"]) == ["control-mean"]
    assert ev["fallbacks"] == ["CUL3"]  # reported, not hidden
    assert isinstance(ev["gate"]["passed"], bool)
    rows = model_lake.read("evaluations", filter=pc.field("name") == "on-head")
    assert set(rows["perturbation"].to_pylist()) == set(HOLDOUT)
