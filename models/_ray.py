"""Ray: a local cluster started on demand (or `--ray-address` / `RAY_ADDRESS`), and Ray Train for the learned models.

Training is data parallel (`TorchTrainer`, DDP): each worker draws its own mini-batches (seeded by rank) and
gradients are averaged. Rank 0 reports a checkpoint every epoch under `<storage>/<run>` (`ray_storage`); Ray Train
(V2) restores a run of the same name and storage from the newest checkpoint in its snapshot, so a killed
training continues where it stopped: the workers print "resuming from epoch k" and the fit metrics record
`resumed_from_epoch` (0 for a fresh run).

On a cluster the workers are spread over its nodes (one per node while nodes last); rank 0 prints which node
each rank ran on and the fit metrics record `worker_nodes`, the number of distinct nodes. Ray Train's storage
must then be one every node reaches: `CELLFARM_RAY_STORAGE` names a shared path (NFS, EFS, a ReadWriteMany
volume) mounted at the same place on every node (see `infra/ray/README.md`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch

from models._latent import LatentShift, TrainArrays, fit_epochs

__all__ = [
    "ENV_RAY_STORAGE",
    "checkpointed_epoch",
    "pickled_by_value",
    "ray_session",
    "ray_storage",
    "train_latent_on_ray",
]

ENV_RAY_STORAGE = "CELLFARM_RAY_STORAGE"


def _resources() -> dict[str, float]:
    import ray

    return dict(cast(Callable[[], dict[str, float]], ray.cluster_resources)())


@contextmanager
def ray_session(address: str | None = None) -> Iterator[dict[str, Any]]:
    """Connect to `address` (or `RAY_ADDRESS`), else start a local Ray with this machine's CPUs, no dashboard."""
    import ray

    if ray.is_initialized():
        yield _resources()
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    if address == "local":  # explicit: Ray would otherwise join whatever cluster `ray start` last left running
        kwargs["num_cpus"] = os.cpu_count() or 1
    ray.init(address=address, **kwargs)
    try:
        yield _resources()
    finally:
        ray.shutdown()


def ray_storage(default: Path) -> Path:
    """Where Ray Train and Tune keep runs and checkpoints: `CELLFARM_RAY_STORAGE` when set (a multi-node cluster
    needs a path every node mounts at the same place), else `default` (machine-local: one machine's Ray)."""
    chosen = os.environ.get(ENV_RAY_STORAGE)
    return Path(chosen).expanduser() if chosen else default


def _worker_nodes() -> list[str]:
    """The Ray node of every rank, gathered over the process group that Ray Train set up (rank order)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [node]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return [str(n) for n in nodes]


def _load_state(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return cast(dict[str, Any], torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False))


def _worker_loop(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(int(config["threads"]))
    arrays: TrainArrays = ray.get(config["arrays"])
    net = config["net_factory"]()
    rank = ray.train.get_context().get_world_rank()
    epochs = int(config["epochs"])
    start, opt_state, last = 0, None, {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # Ray restored this run (same name and storage) from its newest checkpoint
        state = _load_state(ckpt)
        net.load_state_dict(state["model"])
        start, opt_state, last = int(state["epoch"]), state["optimizer"], dict(state.get("metrics", {}))
        if rank == 0:
            print(f"[cellfarm train] resuming from epoch {start}/{epochs}", file=sys.stderr, flush=True)
    nodes = _worker_nodes()
    if rank == 0:
        where = ", ".join(f"rank {r} on {n[:12]}" for r, n in enumerate(nodes))
        print(
            f"[cellfarm train] {len(nodes)} worker(s) on {len(set(nodes))} node(s): {where}",
            file=sys.stderr,
            flush=True,
        )
    resumed = {"resumed_from_epoch": float(start), "worker_nodes": float(len(set(nodes)))}

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        if rank != 0:  # one checkpoint per epoch is enough: rank 0's (DDP keeps the replicas equal)
            ray.train.report({**metrics, **resumed})
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save({**state, "metrics": metrics}, Path(folder) / "state.pt")
            ray.train.report({**metrics, **resumed}, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def on_epoch(epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        if rank == 0:
            print(f"[cellfarm train] epoch {epoch}/{epochs} loss={metrics['loss']:.5f}", file=sys.stderr, flush=True)
        report(metrics, state)

    if start >= epochs:  # restored a finished run: report its last result again so the driver gets it
        report(last, {"model": net.state_dict(), "optimizer": opt_state, "epoch": start})
        return
    net = ray.train.torch.prepare_model(net)
    fit_epochs(
        net,
        arrays,
        epochs=epochs,
        start_epoch=start,
        steps_per_epoch=int(config["steps_per_epoch"]),
        lr=float(config["lr"]),
        seed=int(config["seed"]) + 1000 * rank,
        optimizer_state=opt_state,
        on_epoch=on_epoch,
    )


def checkpointed_epoch(run_dir: Path) -> int:
    """The epoch of the newest checkpoint that Ray Train would restore `run_dir` from (0: none).

    Reads the run's checkpoint-manager snapshot, which Ray Train V2 writes after registering each reported
    checkpoint and reads back when a run of the same name starts: a checkpoint folder alone is not enough.
    """
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0
    return int((latest.get("metrics") or {}).get("epoch", 0))


@contextmanager
def pickled_by_value(*modules: ModuleType) -> Iterator[None]:
    """Ship the functions and classes of `modules` by value while a Ray run is set up.

    Ray's train controller, its workers and Tune's trials unpickle the training loop; by reference that imports
    the whole `models` package (the lake, cell-eval, scanpy: several seconds of CPU per process, the
    controller's on the critical path) when the loop itself needs only torch and numpy.
    """
    from ray import cloudpickle

    register = cast(Callable[[ModuleType], None], cloudpickle.register_pickle_by_value)
    unregister = cast(Callable[[ModuleType], None], cloudpickle.unregister_pickle_by_value)
    for module in modules:
        register(module)
    try:
        yield
    finally:
        for module in modules:
            unregister(module)


def train_latent_on_ray(
    model: LatentShift,
    arrays: TrainArrays,
    *,
    workers: int,
    storage: Path,
    run_name: str,
) -> dict[str, float]:
    """Train `model.net` with `workers` Ray Train workers; resumes `run_name` from its newest checkpoint."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    p = model.params
    resources = _resources()
    cpus = max(int(resources.get("CPU", 1)), 1)
    # a GPU per worker when the cluster has that many (its GPU nodes, not the driver's machine, decide)
    use_gpu = resources.get("GPU", 0.0) >= workers
    saved = checkpointed_epoch(storage / run_name)
    if saved:
        print(
            f"[cellfarm train] {run_name}: a checkpoint of epoch {saved} exists; resuming from it",
            file=sys.stderr,
            flush=True,
        )
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "arrays": ray.put(arrays),
            "net_factory": model.net_factory(),
            "epochs": int(p["epochs"]),
            "steps_per_epoch": int(p["steps_per_epoch"]),
            "lr": float(p["lr"]),
            "seed": int(p["seed"]),
            "threads": max(cpus // workers, 1),
        },
        # SPREAD: on a cluster each worker gets a node of its own while there are nodes (their CPUs and memory
        # bandwidth, not one node's shared); on one machine it is the same as PACK
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1},
            placement_strategy="SPREAD",
        ),
        run_config=RunConfig(name=run_name, storage_path=str(storage)),
    )
    with pickled_by_value(sys.modules[__name__], sys.modules[fit_epochs.__module__]):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray training {run_name} ended without a checkpoint")
    state = _load_state(result.checkpoint)
    net = model.new_net()
    net.load_state_dict(state["model"])
    model.net = net.eval()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    model.fit_metrics = metrics
    return metrics
