"""Models: the training-data loader against tiledbsoma-ml, and Ray Train with 2 workers against 1.

1. Loader (cells/s): `models.iter_cell_batches` vs `tiledbsoma_ml.ExperimentDataset`, in this process, on the
   same SOMA experiment, cells, genes, batch size and shuffle granularity. Both sides yield dense float32
   mini-batches of log1p(counts per 10k); the peer yields raw counts, so the normalisation a user of it must add
   (the same maths, vectorised numpy on each dense batch) is timed on its side; its raw rate is in the details.
2. Training (samples/s, reported, no target): latent-shift through `models._ray.train_latent_on_ray` with 2 Ray
   Train workers vs 1, same epochs and steps per worker, Ray itself started before the clock.

3. Evaluation (seconds): `models.evaluate` (what `cellfarm evaluate` runs: cell-eval as Ray tasks, plus its
   reads and writes) vs cell-eval's `MetricsEvaluator` called directly on the same predictions.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.progress import Progress

from bench._common import (
    WORK,
    Config,
    Result,
    check,
    console,
    gene_reference,
    median,
    scratch_dir,
    shared_data,
    start_local_ray,
)

NAME = "models"
LOADER_PEER = "tiledbsoma_ml.ExperimentDataset"
LOADER_TARGET = ">= 1.0"
TRAIN_PEER = "1 Ray Train worker"
TRAIN_TARGET = "report"  # 2 cores: an honest figure, not a goal
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
HPA = "hpa/proteinatlas_subcellular_location.tsv"
DATASET = "papalexi2021"
BATCH = 1024  # iter_cell_batches' default mini-batch
BLOCK = 16_384  # cells read and shuffled together: cellfarm's block_cells = the peer's io_batch_size
TARGET_SUM = 1e4

F32 = npt.NDArray[np.float32]
Batches = Iterator[tuple[F32, npt.NDArray[np.int64]]]


@dataclass(frozen=True)
class LoaderCase:
    """One dataset of one lake, and what the peer needs to read it (looked up before any clock starts)."""

    label: str
    lake: Any
    dataset: str
    dataset_id: str
    var_ids: npt.NDArray[np.int64]
    passes: int  # full passes per timed repeat, so that one measurement lasts long enough to time


# -- lakes ----------------------------------------------------------------------------------------------------


def _papalexi_lake(root: Path) -> Any:
    """Papalexi + HPA (the gene features latent-shift needs); 2 s to build, so built fresh for every run."""
    import lake

    data = shared_data()
    assert data is not None
    ref = gene_reference()
    target = lake.Lake.open(root, gene_reference=str(ref) if ref else None)
    lake.ingest_atlas(target, data / PAPALEXI, name=DATASET)
    lake.ingest_hpa(target, data / HPA)
    return target


def _synthetic_lake(n_cells: int, progress: Progress) -> Any:
    """The generated Perturb-seq file of bench ingest in a lake, cached in bench/.work/ (about a minute)."""
    import shutil

    import lake
    from bench.bench_ingest import synthetic_file

    root = WORK / f"models-lake-synthetic-{n_cells}"
    done = root / ".bench-complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        task = progress.add_task(f"build synthetic lake ({n_cells:,} cells)", total=2)
        path = synthetic_file(n_cells)
        progress.advance(task)
        lake.ingest_atlas(lake.Lake.open(root), path, name="synthetic")
        progress.advance(task)
        done.write_text(str(n_cells))
    return lake.Lake.open(root)


def _case(label: str, target: Any, dataset: str, passes: int) -> LoaderCase:
    import pyarrow.compute as pc

    did = str(target.find_dataset(name=dataset)["dataset_id"])
    genes = target.read("dataset_genes", filter=pc.field("dataset_id") == did)["soma_joinid"].to_numpy()
    return LoaderCase(label, target, dataset, did, np.sort(genes).astype(np.int64), passes)


# -- loader ---------------------------------------------------------------------------------------------------


def _ours(case: LoaderCase, seed: int) -> Batches:
    from models import iter_cell_batches

    # the whole call is timed: its Delta lookups (dataset row, genes, committed timestamp) included
    return iter_cell_batches(case.lake, case.dataset, batch_size=BATCH, block_cells=BLOCK, shuffle=True, seed=seed)


def _normalise(x: F32) -> F32:
    """log1p(counts per 10k) of a dense batch, in place: what the peer's user adds to get cellfarm's output."""
    totals = x.sum(axis=1, keepdims=True)
    scale = np.divide(np.float32(TARGET_SUM), totals, out=np.zeros_like(totals), where=totals > 0)
    x *= scale
    return np.log1p(x, out=x)


def _peer(case: LoaderCase, seed: int, *, normalise: bool = True) -> Batches:
    import tiledbsoma as soma
    from tiledbsoma_ml import ExperimentDataset

    import lake

    target = case.lake
    with (
        lake.open_experiment(
            target.settings.soma_uri, "homo_sapiens", timestamp=target.committed_soma_timestamp()
        ) as exp,
        exp.axis_query(
            "RNA",
            obs_query=soma.AxisQuery(value_filter=f"dataset_id == '{case.dataset_id}'"),
            var_query=soma.AxisQuery(coords=(case.var_ids,)),
        ) as query,
    ):
        # shuffle_chunk_size = io_batch_size = BLOCK: contiguous blocks in shuffled order, cells shuffled within
        # one, exactly cellfarm's scheme. (Its default, 64-cell chunks, shuffles more globally and reads slower.)
        # typed loosely: attrs' @define plus the class's own __init__ give mypy the wrong signature
        make: Any = ExperimentDataset
        ds: Iterable[tuple[F32, Any]] = make(
            query,
            layer_name="raw",
            batch_size=BATCH,
            io_batch_size=BLOCK,
            shuffle_chunk_size=BLOCK,
            shuffle=True,
            seed=seed,
        )
        for x, obs in ds:
            yield (_normalise(x) if normalise else x), np.asarray(obs["soma_joinid"].to_numpy(), np.int64)


def _drain(batches: Batches) -> tuple[int, int]:
    """(cells, batches) of one full pass; nothing is done with them (a training step would go here)."""
    cells = n = 0
    for x, ids in batches:
        assert x.dtype == np.float32, x.dtype
        assert x.shape == (len(ids), x.shape[1]), x.shape
        cells += len(ids)
        n += 1
    return cells, n


def _time_passes(make: Callable[[int], Batches], passes: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    cells = sum(_drain(make(seed))[0] for seed in range(passes))
    return time.perf_counter() - t0, cells


def _same_values(case: LoaderCase) -> bool:
    """The peer's first two batches, normalised, equal cellfarm's rows for the same cells (matched by
    soma_joinid: the two shuffles differ), and cellfarm yields every cell of the dataset once."""
    peer: dict[int, F32] = {}
    for x, ids in _peer(case, 0):
        peer.update(zip(ids.tolist(), x.copy(), strict=True))
        if len(peer) >= 2 * BATCH:
            break
    seen: list[int] = []
    same = True
    for x, ids in _ours(case, 0):
        seen += ids.tolist()
        for i, row in zip(ids.tolist(), x, strict=True):
            if i in peer:
                same &= bool(np.allclose(peer.pop(i), row, rtol=1e-5, atol=1e-6))
    n_obs = int(case.lake.find_dataset(name=case.dataset)["n_obs"])
    return same and not peer and len(seen) == len(set(seen)) == n_obs


def _loader(case: LoaderCase, cfg: Config, progress: Progress) -> Result:
    task = progress.add_task(f"loader {case.label}", total=2 + 3 * cfg.repeats)
    same = _same_values(case)  # also warms both sides up: file cache, imports, the peer's numba JIT
    progress.advance(task)
    _time_passes(lambda s: _ours(case, s), 1)
    _time_passes(lambda s: _peer(case, s), 1)
    progress.advance(task)
    ours_s: list[float] = []
    peer_s: list[float] = []
    raw_s: list[float] = []
    cells = 0
    for _ in range(cfg.repeats):  # alternate, so that drift (page cache, the other tenants' load) hits all
        t, cells = _time_passes(lambda s: _ours(case, s), case.passes)
        ours_s.append(t)
        progress.advance(task)
        t, peer_cells = _time_passes(lambda s: _peer(case, s), case.passes)
        peer_s.append(t)
        progress.advance(task)
        t, _ = _time_passes(lambda s: _peer(case, s, normalise=False), case.passes)
        raw_s.append(t)
        progress.advance(task)
        assert peer_cells == cells, f"peer yielded {peer_cells} cells, cellfarm {cells}"
    ours_rate, peer_rate, raw_rate = cells / median(ours_s), cells / median(peer_s), cells / median(raw_s)
    ratio = ours_rate / peer_rate
    n_genes = len(case.var_ids)
    return Result(
        metric=f"loader {case.label} x {n_genes:,} genes, batch {BATCH}, shuffled: dense log-normalised X",
        cellfarm=round(ours_rate, 1),
        peer=round(peer_rate, 1),
        ratio=round(ratio, 3),
        target=LOADER_TARGET,
        met=check(ratio, LOADER_TARGET) and same,
        unit="cells/s",
        details={
            "peer": LOADER_PEER,
            "repeats": cfg.repeats,
            "passes_per_repeat": case.passes,
            "cells_per_pass": cells // case.passes,
            "genes": n_genes,
            "batch_size": BATCH,
            "block_cells": BLOCK,
            "cellfarm": "models.iter_cell_batches(shuffle=True, block_cells=BLOCK): its Delta lookups timed; one "
            "SOMA read per block (read ahead on a thread), normalised while sparse, each batch densified",
            "peer_setup": "ExperimentDataset(axis_query(obs dataset_id filter, var = the dataset's genes), "
            "layer 'raw', batch_size=BATCH, io_batch_size=shuffle_chunk_size=BLOCK, shuffle=True, eager fetch); "
            "experiment opened and query run inside the clock, dataset id and gene ids looked up outside it",
            "peer_normalises": False,
            "peer_normalisation_added": "log1p(x * 1e4 / row sum), float32, in place on each dense batch (timed)",
            "peer_raw_counts_cells_per_s": round(raw_rate, 1),
            "ratio_vs_peer_raw_counts": round(ours_rate / raw_rate, 3),
            "same_values": same,
            "cellfarm_seconds": [round(t, 4) for t in ours_s],
            "peer_seconds": [round(t, 4) for t in peer_s],
            "peer_raw_seconds": [round(t, 4) for t in raw_s],
            "load_average": _load(),
        },
    )


# -- training -------------------------------------------------------------------------------------------------


def _samples_per_step() -> tuple[int, str]:
    """Cells one worker draws per optimiser step: `fit_epochs`' batch (LatentShift passes none of its own)."""
    from models._latent import fit_epochs

    params = inspect.signature(fit_epochs).parameters
    pert, cells = int(params["batch_perturbations"].default), int(params["cells_per_perturbation"].default)
    why = (
        f"{pert} perturbations x {cells} control cells through the autoencoder per step per worker "
        f"(fit_epochs' batch_perturbations x cells_per_perturbation; the {pert * cells} perturbed cells drawn "
        "alongside are only averaged into the loss target)"
    )
    return pert * cells, why


def _train_inputs(target: Any) -> tuple[Any, Any]:
    from models import build_gene_features, load_perturb_data, make_split

    data = load_perturb_data(target, DATASET)
    train_set, _ = make_split(data, fraction=0.2, seed=0).apply(data)
    return train_set, build_gene_features(target, data)


def _prepared(inputs: tuple[Any, Any], epochs: int, steps: int) -> Any:
    """A LatentShift with its training arrays laid out and no net yet: what models.train hands to Ray."""
    from models import LatentShift

    train_set, features = inputs
    model = LatentShift(epochs=epochs, steps_per_epoch=steps, seed=0, defer_training=True)
    model.fit(train_set, features)
    model.params.pop("defer_training")
    assert model.train_arrays is not None
    return model


def _train_once(
    inputs: tuple[Any, Any], storage: Path, run: str, workers: int, epochs: int, steps: int
) -> tuple[float, float | None]:
    """One fresh Ray Train run (a new run name, so nothing resumes): (wall, steady-state seconds per epoch)."""
    from models._ray import train_latent_on_ray

    model = _prepared(inputs, epochs, steps)
    t0 = time.perf_counter()
    metrics = train_latent_on_ray(model, model.train_arrays, workers=workers, storage=storage, run_name=run)
    wall = time.perf_counter() - t0
    assert int(metrics.get("epoch", epochs)) == epochs, metrics
    # rank 0 writes a checkpoint folder every epoch: first to last spans epochs-1 epochs of pure training,
    # without worker start-up, DDP set-up or the driver's teardown
    stamps = sorted(p.stat().st_mtime for p in (storage / run).glob("checkpoint_*") if p.is_dir())
    per_epoch = (stamps[-1] - stamps[0]) / (epochs - 1) if len(stamps) == epochs and epochs > 1 else None
    return wall, per_epoch


def _in_process(inputs: tuple[Any, Any], steps: int, batch: int) -> dict[str, float]:
    """samples/s of the same loop with no Ray, torch on 1 and on 2 threads: how much of the 2-vs-1 figure is
    data parallelism and how much is the 1-worker run's 2 threads (models._ray gives it CPUs // workers)."""
    import torch

    from models._latent import fit_epochs

    model = _prepared(inputs, 1, steps)
    before = torch.get_num_threads()
    out: dict[str, float] = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fit_epochs(model.new_net(), model.train_arrays, epochs=1, steps_per_epoch=2)  # warm-up
            t0 = time.perf_counter()
            fit_epochs(model.new_net(), model.train_arrays, epochs=1, steps_per_epoch=steps)
            out[f"{threads} thread{'s' if threads > 1 else ''}"] = round(steps * batch / (time.perf_counter() - t0), 1)
    finally:
        torch.set_num_threads(before)
    return out


def _training(target: Any, cfg: Config, progress: Progress) -> list[Result]:
    import ray

    epochs, steps = (2, 10) if cfg.quick else (5, 50)
    batch, batch_why = _samples_per_step()
    task = progress.add_task(f"latent-shift on Ray, {epochs} epochs x {steps} steps", total=3 + 2 * cfg.repeats)
    inputs = _train_inputs(target)
    in_process = _in_process(inputs, steps, batch)
    progress.advance(task)
    # Ray is started here, not by models._ray.ray_session, only to keep the workers' per-epoch logs off the
    # progress display (log_to_driver); otherwise the same local cluster: every CPU, no dashboard
    t0 = time.perf_counter()
    started = start_local_ray()
    ray_start = time.perf_counter() - t0
    walls: dict[int, list[float]] = {1: [], 2: []}
    epoch_s: dict[int, list[float]] = {1: [], 2: []}
    try:
        with scratch_dir("ray") as storage:
            storage.mkdir(parents=True)
            for workers in (1, 2):  # warm-up: the first Ray Train run in a process pays for imports and actors
                _train_once(inputs, storage, f"warmup-{workers}", workers, 1, 5)
                progress.advance(task)
            for rep in range(cfg.repeats):
                for workers in (1, 2):  # alternate, so that drift hits both
                    wall, per_epoch = _train_once(inputs, storage, f"r{rep}-w{workers}", workers, epochs, steps)
                    walls[workers].append(wall)
                    if per_epoch is not None:
                        epoch_s[workers].append(per_epoch)
                    progress.advance(task)
    finally:
        if started:
            ray.shutdown()

    def rate(workers: int, seconds: float, n_epochs: float) -> float:
        # data parallel: every worker runs `steps` steps per epoch on its own batch, so the samples add up
        return workers * n_epochs * steps * batch / seconds

    common: dict[str, Any] = {
        "peer": TRAIN_PEER,
        "repeats": cfg.repeats,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "samples_per_step_per_worker": batch,
        "samples": batch_why + "; samples/s = workers x epochs x steps x samples per step / seconds",
        "dataset": f"{DATASET} training split (80% of perturbations + all controls)",
        "cpus": os.cpu_count(),
        "ray_init_seconds_excluded": round(ray_start, 3),
        "threads_per_worker": "models._ray: CPUs // workers",
        "load_average": _load(),
    }
    results = []
    w1, w2 = median(walls[1]), median(walls[2])
    e2e = rate(2, w2, epochs) / rate(1, w1, epochs)
    results.append(
        Result(
            metric=f"latent-shift training on Ray Train, 2 workers vs 1: end to end ({epochs} epochs, Ray up)",
            cellfarm=round(rate(2, w2, epochs), 1),
            peer=round(rate(1, w1, epochs), 1),
            ratio=round(e2e, 3),
            target=TRAIN_TARGET,
            met=True,  # a reported figure: there is no target to miss
            unit="samples/s",
            details=common
            | {
                "timed": "train_latent_on_ray: trainer and worker start-up, DDP set-up, training, a checkpoint "
                "per epoch, the driver loading the last one",
                "wall_seconds_2_workers": [round(t, 3) for t in walls[2]],
                "wall_seconds_1_worker": [round(t, 3) for t in walls[1]],
            },
        )
    )
    if epoch_s[1] and epoch_s[2] and epochs > 1:
        s1, s2 = median(epoch_s[1]), median(epoch_s[2])
        steady = rate(2, s2, 1) / rate(1, s1, 1)
        results.append(
            Result(
                metric="latent-shift training on Ray Train, 2 workers vs 1: steady state (between epochs)",
                cellfarm=round(rate(2, s2, 1), 1),
                peer=round(rate(1, s1, 1), 1),
                ratio=round(steady, 3),
                target=TRAIN_TARGET,
                met=True,
                unit="samples/s",
                details=common
                | {
                    "timed": "first to last per-epoch checkpoint of rank 0 (epochs 2..N): training steps, "
                    "gradient all-reduce and checkpointing only",
                    "seconds_per_epoch_2_workers": [round(t, 3) for t in epoch_s[2]],
                    "seconds_per_epoch_1_worker": [round(t, 3) for t in epoch_s[1]],
                    "in_process_no_ray_samples_per_s": in_process,
                },
            )
        )
    return results


def _load() -> list[float]:
    """1, 5 and 15 minute load averages: on a shared 2-core machine they say how busy the run was."""
    return [round(x, 2) for x in os.getloadavg()]


def run(cfg: Config, progress: Progress) -> list[Result]:
    data = shared_data()
    if data is None or not (data / PAPALEXI).is_file() or not (data / HPA).is_file():
        console.print(f"[yellow]skip[/] models: {PAPALEXI} or {HPA} not found (set CELLFARM_SHARED_DATA)")
        return []
    results: list[Result] = []
    with scratch_dir("models-lake") as root:
        task = progress.add_task("build papalexi lake", total=1)
        papalexi = _papalexi_lake(root)
        progress.advance(task)
        results.append(
            _loader(_case("papalexi 20,729 cells", papalexi, DATASET, 1 if cfg.quick else 10), cfg, progress)
        )
        if not cfg.quick:  # Papalexi is small: the larger file shows the streaming side (blocks, read-ahead)
            n = 200_000
            synthetic = _synthetic_lake(n, progress)
            results.append(_loader(_case(f"synthetic {n:,} cells", synthetic, "synthetic", 1), cfg, progress))
        results += _training(papalexi, cfg, progress)
        results.append(_evaluation(papalexi, cfg, progress))
    return results


EVAL_PEER = "cell-eval MetricsEvaluator, called directly, one prediction after another"
EVAL_TARGET = "<= 1.1"
HOLDOUT = ["BRD4", "ETV7", "IFNGR1", "JAK2", "MYC", "SMAD4"]


def _evaluation(target: Any, cfg: Config, progress: Progress) -> Result:
    """`models.evaluate` (what `cellfarm evaluate` runs) vs cell-eval on the same predictions, in this process.

    Both sides evaluate the same four predictions (the model and the baselines that differ from it) with the
    `full` profile. Ours also reads the pinned snapshot, fits the baselines, fans cell-eval out as Ray tasks,
    writes `evaluations` and `models.metrics` and draws the plot. Ray is started before the clock (a lab's
    cluster is up; its start-up is in the details), and both sides are warmed up once (numba's cache, imports).
    """
    import contextlib
    import io
    import tempfile

    import anndata as ad
    import pandas as pd
    import ray
    from cell_eval import MetricsEvaluator

    from models import BASELINES, CONTROL, Snapshot, evaluate, load_perturb_data, resolve, train
    from models._evaluate import MODEL, _fit_baselines, _predictions
    from models._splits import Split

    task = progress.add_task("evaluate vs bare cell-eval", total=2 + 2 * cfg.repeats)
    ref = train(target, "perturbation-mean", DATASET, holdout=HOLDOUT).ref
    record = resolve(target, ref)
    data = load_perturb_data(target, DATASET, at=Snapshot.from_dict(record.trained_on))
    split = Split.from_dict(record.trained_on["split"])
    train_set, test_set = split.apply(data)
    predictors = {MODEL: record.load(), **_fit_baselines(target, data, train_set, BASELINES, skip=record)}
    real, preds, _ = _predictions(test_set, predictors, seed=split.seed)
    genes = pd.DataFrame(index=pd.Index([str(g) for g in data.gene_ids]))

    def adata(x: F32, labels: list[str]) -> ad.AnnData:
        return ad.AnnData(
            X=x, obs=pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(len(labels)).astype(str)), var=genes
        )

    def peer() -> float:
        t0 = time.perf_counter()
        for pred in preds.values():
            # cell-eval's progress bars would tear the bench's own display apart
            with tempfile.TemporaryDirectory() as out, contextlib.redirect_stderr(io.StringIO()):
                MetricsEvaluator(
                    adata_pred=adata(*pred),
                    adata_real=adata(*real),
                    control_pert=CONTROL,
                    pert_col="perturbation",
                    outdir=str(Path(out) / "ce"),
                ).compute(profile="full", write_csv=False)
        return time.perf_counter() - t0

    def ours() -> float:
        t0 = time.perf_counter()
        evaluate(target, ref)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    started = start_local_ray()
    ray_start = time.perf_counter() - t0
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    try:
        ours()
        progress.advance(task)
        peer()
        progress.advance(task)
        for _ in range(cfg.repeats):  # alternate, so that drift hits both
            times["ours"].append(ours())
            progress.advance(task)
            times["peer"].append(peer())
            progress.advance(task)
    finally:
        if started:
            ray.shutdown()
    a, b = median(times["ours"]), median(times["peer"])
    ratio = a / b
    return Result(
        metric=f"evaluation of {ref} and {len(preds) - 1} baselines on {len(HOLDOUT)} held-out perturbations",
        cellfarm=round(a, 2),
        peer=round(b, 2),
        ratio=round(ratio, 3),
        target=EVAL_TARGET,
        met=check(ratio, EVAL_TARGET),
        unit="s (cellfarm/peer, lower is better)",
        details={
            "peer": EVAL_PEER,
            "repeats": cfg.repeats,
            "predictions": sorted(preds),
            "cells": len(real[1]),
            "profile": "full",
            "timed_ours": "models.evaluate: pinned read, baseline fits, cell-eval as Ray tasks, Delta writes, plot",
            "ray_init_seconds_excluded": round(ray_start, 3),
            "seconds_ours": [round(t, 3) for t in times["ours"]],
            "seconds_peer": [round(t, 3) for t in times["peer"]],
            "cpus": os.cpu_count(),
            "load_average": _load(),
        },
    )
