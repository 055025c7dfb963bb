"""Ray: a local cluster started on demand (or `--ray-address` / `RAY_ADDRESS`), and Ray Train for the learned models.

Training is data parallel (`TorchTrainer`, DDP): each worker draws its own mini-batches (seeded by rank) and
gradients are averaged. Rank 0 reports a checkpoint every epoch under `<lake>/_state/ray/<run>`; Ray Train
resumes a run of the same name from its newest checkpoint, so a killed training continues where it stopped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from models._latent import LatentShift, TrainArrays, fit_epochs

__all__ = ["ray_session", "train_latent_on_ray"]


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
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    if address is None:
        kwargs["num_cpus"] = os.cpu_count() or 1
    ray.init(address=address, **kwargs)
    try:
        yield _resources()
    finally:
        ray.shutdown()


def _worker_loop(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(int(config["threads"]))
    arrays: TrainArrays = ray.get(config["arrays"])
    net = config["net_factory"]()
    start, opt_state = 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        start, opt_state = int(state["epoch"]), state["optimizer"]
    net = ray.train.torch.prepare_model(net)
    rank = ray.train.get_context().get_world_rank()
    epochs = int(config["epochs"])

    def on_epoch(epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        print(f"[cellfarm train] epoch {epoch}/{epochs} loss={metrics['loss']:.5f}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

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
    cpus = max(int(_resources().get("CPU", 1)), 1)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "arrays": ray.put(arrays),
            "net_factory": model.new_net,
            "epochs": int(p["epochs"]),
            "steps_per_epoch": int(p["steps_per_epoch"]),
            "lr": float(p["lr"]),
            "seed": int(p["seed"]),
            "threads": max(cpus // workers, 1),
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=torch.cuda.is_available(), resources_per_worker={"CPU": 1}
        ),
        run_config=RunConfig(name=run_name, storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray training {run_name} ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False)
    net = model.new_net()
    net.load_state_dict(state["model"])
    model.net = net.eval()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    model.fit_metrics = metrics
    return metrics
