"""Ray on two nodes: a head (`ray start --head`) and a second node (`ray start --address`), one CPU each, on this
machine. A 2-worker `cellfarm train --ray-address` puts one Ray Train worker on each node and predicts, within a
stated tolerance, what a single-process fit predicts; `cellfarm evaluate` runs its cell-eval tasks on both nodes.
A `--tune` search runs its trials on the cluster, scored on a validation split of the training perturbations, then
fits the best configuration there. The manifests of `infra/ray/` describe such a cluster on Kubernetes and on a
cloud."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml

import lake
from models import resolve
from tests.conftest import ROOT, run_cli
from tests.models.conftest import HOLDOUT, RayHead, ray_cluster

EPOCHS = 2
# A single-process fit (`--workers 1`, no Ray) is a different optimisation from the 2-worker DDP one, not the same one
# run elsewhere: one sampler and one batch per step against two ranks' samplers and their averaged gradients. So
# it must learn the same effects, not the same bits: the predicted effects correlate (0.99 measured) and differ by
# a fraction of their size (0.14 of the mean |effect| measured). (The same 2-worker training on a single node
# predicts bitwise the same as on two nodes; not re-run here, it would cost another Ray training.)
SINGLE_PROCESS_MIN_CORR = 0.95
SINGLE_PROCESS_MAX_REL_DIFF = 0.25

TRAIN_ARGS = ("train", "latent-shift", "--dataset", "papalexi2021", "--holdout-perturbations", ",".join(HOLDOUT))


def _train(target: lake.Lake, name: str, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A 2-worker Ray Train fit of `EPOCHS` epochs, registered as `name`."""
    opts = ["--workers", "2", "--epochs", str(EPOCHS), "--name", name, *extra]
    proc = run_cli(*TRAIN_ARGS, *opts, lake_dir=Path(target.root), **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _nodes_line(stderr: str) -> str:
    """Rank 0's line saying where the ranks ran (Ray may forward a worker's line twice when two nodes share an IP)."""
    lines = {line.split("[cellfarm train] ")[-1] for line in stderr.splitlines() if "worker(s) on" in line}
    assert len(lines) == 1, stderr[-3000:]
    return lines.pop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayHead]:
    with ray_cluster(head_cpus=1, node_cpus=(1,)) as head:
        yield head


@dataclass(frozen=True)
class Trained:
    proc: subprocess.CompletedProcess[str]
    storage: Path


@pytest.fixture(scope="module")
def on_cluster(model_lake: lake.Lake, cluster: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One training on the two nodes (tens of seconds here), for the tests below; its Ray Train runs go to a
    shared storage path named by CELLFARM_RAY_STORAGE, as on a real cluster."""
    storage = tmp_path_factory.mktemp("ray-storage")
    proc = _train(
        model_lake, "on-cluster", "--ray-address", cluster.address, CELLFARM_RAY_STORAGE=str(storage), **cluster.env
    )
    return Trained(proc, storage)


@pytest.fixture(scope="module")
def tuned(model_lake: lake.Lake, cluster: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A `--tune` search of two trials and then a 2-worker fit of the best, both on the cluster."""
    storage = tmp_path_factory.mktemp("ray-tune-storage")
    tune = ("--tune", "--tune-trials", "2", "--ray-address", cluster.address)
    proc = _train(model_lake, "tuned", *tune, CELLFARM_RAY_STORAGE=str(storage), **cluster.env)
    return Trained(proc, storage)


def test_tune_then_fit_on_the_cluster(model_lake: lake.Lake, cluster: RayHead, tuned: Trained) -> None:
    assert tuned.proc.stdout.strip() == "tuned:1"  # progress goes to stderr, the result to stdout
    assert f"[cellfarm train] epoch {EPOCHS}/{EPOCHS}" in tuned.proc.stderr
    rec = resolve(model_lake, "tuned")
    assert rec.trained_on["ray_address"] == cluster.address  # that cluster's, not a local Ray
    assert rec.trained_on["workers"] == 2
    assert rec.metrics["fit"]["epoch"] == EPOCHS
    assert rec.metrics["fit"]["resumed_from_epoch"] == 0.0
    pred, fallbacks = rec.load().predict_delta(HOLDOUT)
    assert pred.shape[0] == len(HOLDOUT)
    assert np.isfinite(pred).all()
    assert fallbacks == ["CUL3"]


def test_tune_scores_trials_on_a_validation_split(model_lake: lake.Lake, tuned: Trained) -> None:
    assert f"[cellfarm tune] trial 2/2 epoch {EPOCHS}/{EPOCHS}" in tuned.proc.stderr
    rec = resolve(model_lake, "tuned")
    tune = rec.metrics["tune"]
    trials = tune["trials"]
    assert len(trials) == 2
    assert all(np.isfinite(t["pearson_delta"]) and np.isfinite(t["mse_delta"]) for t in trials), trials
    assert all(t["epochs"] == EPOCHS for t in trials)
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
    assert len(list(tuned.storage.iterdir())) >= 2  # Tune's experiment and the final fit, in the shared storage

    before = model_lake.version("models")
    bad = run_cli("train", "linear", "--dataset", "papalexi2021", "--tune", lake_dir=Path(model_lake.root))
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--tune" in bad.stderr
    assert "baseline" in bad.stderr
    assert model_lake.version("models") == before


def test_train_puts_a_worker_on_each_node(model_lake: lake.Lake, cluster: RayHead, on_cluster: Trained) -> None:
    line = _nodes_line(on_cluster.proc.stderr)
    assert "2 worker(s) on 2 node(s)" in line, line
    ranks = dict(re.findall(r"rank (\d) on ([0-9a-f]+)", line))
    assert set(ranks) == {"0", "1"}
    assert ranks["0"] != ranks["1"]
    rec = resolve(model_lake, "on-cluster")
    assert rec.metrics["fit"]["worker_nodes"] == 2.0
    assert rec.metrics["fit"]["epoch"] == EPOCHS
    assert rec.trained_on["ray_address"] == cluster.address
    assert rec.trained_on["workers"] == 2
    # the second node really ran a train worker: its own temp dir holds that worker's log
    node_logs = [p for p in cluster.nodes[0].glob("session_*/logs/worker-*.out") if "RayTrainWorker" in p.read_text()]
    assert node_logs, sorted(p.name for p in cluster.nodes[0].glob("session_*/logs/*"))
    # Ray Train kept the run where CELLFARM_RAY_STORAGE said, not in the lake's machine-local state
    assert len(list(on_cluster.storage.glob("on-cluster-*"))) == 1
    assert not list((Path(model_lake.root) / "_state" / "ray").glob("on-cluster-*"))


def test_two_nodes_predict_what_one_process_predicts(model_lake: lake.Lake, on_cluster: Trained) -> None:
    opts = ["--workers", "1", "--epochs", str(EPOCHS), "--name", "one-process"]  # same seed, same split
    single = run_cli(*TRAIN_ARGS, *opts, lake_dir=Path(model_lake.root))
    assert single.returncode == 0, single.stderr[-3000:]
    one = resolve(model_lake, "one-process")
    assert one.trained_on["workers"] == 1
    assert "worker_nodes" not in one.metrics["fit"]  # trained in the command's own process
    two = resolve(model_lake, "on-cluster")
    assert two.trained_on["split"] == one.trained_on["split"]
    pred_two, fallbacks_two = two.load().predict_delta(HOLDOUT)
    pred_one, fallbacks_one = one.load().predict_delta(HOLDOUT)
    assert fallbacks_two == fallbacks_one == ["CUL3"]
    effects = np.abs(pred_one).mean()
    assert effects > 1e-3  # effects large enough for the comparison to mean something
    assert np.corrcoef(pred_two.ravel(), pred_one.ravel())[0, 1] >= SINGLE_PROCESS_MIN_CORR
    assert np.abs(pred_two - pred_one).mean() <= SINGLE_PROCESS_MAX_REL_DIFF * effects


def test_evaluate_on_the_cluster(model_lake: lake.Lake, cluster: RayHead, on_cluster: Trained) -> None:
    drivers = len(cluster.driver_logs())
    args = ["evaluate", "on-cluster:1", "--baselines", "control-mean", "--ray-address", cluster.address]
    proc = run_cli(*args, lake_dir=Path(model_lake.root), **cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(cluster.driver_logs()) == drivers + 1  # a driver of that cluster, not a local Ray
    # two cell-eval tasks (model, control-mean) of one CPU each on two 1-CPU nodes: one ran on the second node
    tasks = [p for p in cluster.nodes[0].glob("session_*/logs/worker-*.out") if "_cell_eval_task" in p.read_text()]
    assert tasks, sorted(p.name for p in cluster.nodes[0].glob("session_*/logs/*"))
    ev = resolve(model_lake, "on-cluster:1").metrics["evaluation"]
    assert ev["perturbations"] == sorted(HOLDOUT)
    assert list(ev["baselines"]) == ["control-mean"]
    assert ev["fallbacks"] == ["CUL3"]  # reported, not hidden
    assert isinstance(ev["gate"]["passed"], bool)
    rows = model_lake.read("evaluations", filter=pc.field("name") == "on-cluster")
    assert set(rows["perturbation"].to_pylist()) == set(HOLDOUT)
    assert set(rows["baseline"].to_pylist()) == {"control-mean"}


def test_ray_manifests_describe_cpu_and_gpu_workers() -> None:
    infra = ROOT / "infra" / "ray"
    claim, kuberay = yaml.safe_load_all((infra / "raycluster.yaml").read_text())
    assert (kuberay["apiVersion"], kuberay["kind"]) == ("ray.io/v1", "RayCluster")
    spec = kuberay["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    assert spec["rayVersion"] == version("ray")  # the nodes run the Ray the drivers have
    for pod in [spec["headGroupSpec"], *groups.values()]:
        (container,) = pod["template"]["spec"]["containers"]
        env = {e["name"] for e in container["env"]}
        assert {"CELLFARM_LAKE", "CELLFARM_RAY_STORAGE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
        mounts = {m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["template"]["spec"]["volumes"]}
        assert mounts <= volumes.keys()
        assert volumes["ray-storage"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes and reads Ray Train's runs

    # (schemas: tests/infra/test_manifests.py; here, what cellfarm needs of the cluster)
    launcher = yaml.safe_load((infra / "cluster.yaml").read_text())
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    resources = {name: t["resources"] for name, t in types.items()}
    assert resources["gpu"]["GPU"] >= 1
    assert resources["cpu"]["CPU"] >= 1
    assert resources["cpu"].get("GPU", 0) == 0
