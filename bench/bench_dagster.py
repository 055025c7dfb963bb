"""Orchestration overhead: the demo graph materialized through Dagster vs the same steps called directly.

Both sides start from a fresh lake and do the same work on the demo data (the Papalexi Perturb-seq subset and
the HPA table, the demo's held-out perturbations), in this process, on one local Ray started before the clocks:

- Dagster: one `dg.materialize` run of the project's assets (atlas partition, `hpa_subcellular`,
  `training_set`, a `model_<kind>` per kind, an `evaluation_<kind>` per candidate kind, `production_model`,
  `duckdb_catalog`) with every check of those assets, the partition added inside the clock (what the drop
  sensor does), files picked up from a drop folder. Twice: on a SQLite instance on disk (what `dagster dev` and
  `make ui` use), and on Dagster's in-memory instance, which tells the event log's disk writes apart from the
  rest of Dagster's machinery.
- Direct: `lake.ingest_atlas`, `lake.ingest_hpa`, `models.train` per kind with the same holdout,
  `models.evaluate` per candidate, `models.promote` of the best version that passes the gate,
  `lake.write_catalog`: what a script (or the demo) calls, with no Dagster.

What Dagster adds is therefore its machinery (plan, event log, resources, step context) and what the project's
assets do beyond the bare calls: the training set pinned once more (`training_set` reads the dataset), the asset
checks (schema, keys, row counts, gene ids, the promotion gate), and the metadata (previews, counts, plots).
The three sides take turns in a rotating order; each row is one Dagster side's median over the direct median.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench._common import (
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

NAME = "dagster"
PEER = "the same steps called directly (lake, models)"
TARGET = "<= 1.3"
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
HPA = "hpa/proteinatlas_subcellular_location.tsv"
DATASET = "papalexi2021"
# latent-shift (Ray Train, 1-2 min per fit here) is left out: it would add 1-2 minutes to each of the 11 runs (3
# sides x 3 repeats + 2 warm-ups), 15-20 minutes on 2 cores, for the same `models.train` call on every side (the
# ratio is about orchestration, which a longer common step would only dilute)
KINDS = ["control-mean", "perturbation-mean", "additive", "linear"]
QUICK_KINDS = ["control-mean", "perturbation-mean"]

Timings = dict[str, float]


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """``name`` set to ``value`` (unchanged when None) for the block; both sides' lakes open with it."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Dagster's console logger (a line per event), cell-eval's progress bars and warnings go to /dev/null: they
    would tear the bench's display apart. They are still formatted and written, as in any run."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def _candidates(kinds: list[str]) -> list[str]:
    import models

    return [k for k in kinds if k != models.GATE_BASELINE]


# -- direct ---------------------------------------------------------------------------------------------------


def _direct(root: Path, data: Path, kinds: list[str]) -> tuple[float, Timings, str]:
    """The steps as plain calls on a fresh lake: (wall seconds, seconds per call, the promoted model's kind)."""
    import lake
    import models
    from cellfarm._demo_models import DEMO_HOLDOUT

    steps: Timings = {}

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        steps[name] = time.perf_counter() - t

    t0 = time.perf_counter()
    target = lake.Lake.open(root / "lake")
    with step("ingest_atlas"):
        lake.ingest_atlas(target, data / PAPALEXI, name=DATASET)
    with step("ingest_hpa"):
        lake.ingest_hpa(target, data / HPA)
    records: dict[str, models.ModelRecord] = {}
    for kind in kinds:
        with step(f"train {kind}"):
            records[kind] = models.train(target, kind, DATASET, holdout=list(DEMO_HOLDOUT), workers=2)
    verdicts: dict[str, models.GateVerdict] = {}
    for kind in _candidates(kinds):
        with step(f"evaluate {kind}"):
            evaluation = models.evaluate(target, records[kind].ref)
            verdicts[kind] = models.check_gate(evaluation.record)
    with step("promote"):
        passing = {k: v for k, v in verdicts.items() if v.passed}
        if not passing:
            raise RuntimeError(f"no candidate beats {models.GATE_BASELINE}: the bench expects a promotion")
        best = max(passing, key=lambda k: passing[k].margin)
        models.promote(target, records[best].ref)
    with step("write_catalog"):
        lake.write_catalog(target, root / "cellfarm.duckdb")
    return time.perf_counter() - t0, steps, best


# -- dagster --------------------------------------------------------------------------------------------------


def _selection(kinds: list[str]) -> list[str]:
    from dagster_project.training import evaluation_key, model_key

    return [
        "soma_experiment",
        "cells",
        "genes",
        "hpa_subcellular",
        "training_set",
        *(model_key(k) for k in kinds),
        *(evaluation_key(k) for k in _candidates(kinds)),
        "production_model",
        "duckdb_catalog",
    ]


def _drop_folder(root: Path, data: Path) -> Path:
    """The drop folder the sensors watch, with the demo files linked in (nothing copied)."""
    drop = root / "drop"
    for kind, source, name in (("atlas", PAPALEXI, f"{DATASET}.h5ad"), ("hpa", HPA, Path(HPA).name)):
        (drop / kind).mkdir(parents=True)
        (drop / kind / name).symlink_to(data / source)
    return drop


def _instance(root: Path, storage: str) -> Any:
    """A fresh Dagster instance: ``sqlite``, SQLite files in a folder (what `dagster dev` and `make ui` use), or
    ``memory``, Dagster's ephemeral in-memory storage (its machinery without a disk under the event log)."""
    import dagster as dg

    if storage == "memory":
        return dg.DagsterInstance.ephemeral()
    home = root / "dagster-home"
    home.mkdir()
    return dg.DagsterInstance.local_temp(str(home))


def _dagster(root: Path, data: Path, kinds: list[str], storage: str) -> tuple[float, Timings, str, dict[str, Any]]:
    """One run of the graph on a fresh lake and instance: (wall seconds, seconds per step, the promoted model's
    kind, where the time went)."""
    import dagster as dg

    from cellfarm._demo_models import DEMO_HOLDOUT
    from dagster_project import defs
    from dagster_project.partitions import ATLAS_DATASETS
    from dagster_project.resources import DropFolderResource, LakeResource, RayResource, ServingResource
    from dagster_project.training import TrainingSetConfig

    drop = _drop_folder(root, data)
    resources = {
        "lake": LakeResource(root=str(root / "lake")),
        "ray": RayResource(workers=2),  # the local Ray already up: each step's `ray_session` joins it
        "serving": ServingResource(),  # `served_model` (a running server) is not selected
        "drop": DropFolderResource(path=str(drop)),
    }
    assets: list[Any] = [*(defs.assets or []), *(defs.asset_checks or [])]
    run_config = dg.RunConfig(ops={"training_set": TrainingSetConfig(holdout_perturbations=list(DEMO_HOLDOUT))})
    with _instance(root, storage) as instance:
        t0, started = time.perf_counter(), time.time()
        instance.add_dynamic_partitions(str(ATLAS_DATASETS.name), [DATASET])
        result = dg.materialize(
            assets,
            selection=dg.AssetSelection.assets(*_selection(kinds)),
            instance=instance,
            resources=resources,
            partition_key=DATASET,
            run_config=run_config,
        )
        wall, ended = time.perf_counter() - t0, time.time()
        steps, profile = _step_times(instance, result.run_id, defs, started, ended)
        production = result.asset_materializations_for_node("production_model")[0].metadata["kind"]
    return wall, steps, str(getattr(production, "value", production)), profile


def _step_times(instance: Any, run_id: str, defs: Any, started: float, ended: float) -> tuple[Timings, dict[str, Any]]:
    """Seconds per step (start to success, from the run's event log), asset steps and check steps told apart, and
    the time outside steps: before the run's first event and after its last (`materialize` building the job from
    the definitions, the run record), and between steps (the plan, step hand-overs)."""
    start: dict[str, float] = {}
    steps: Timings = {}
    events = instance.all_logs(run_id)
    first, last = events[0].timestamp, events[-1].timestamp
    for entry in events:
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            start[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = entry.timestamp - start[event.step_key]
    asset_ops = {a.op.name for a in defs.assets or [] if hasattr(a, "op")}
    in_assets = sum(t for k, t in steps.items() if k in asset_ops)
    in_checks = sum(t for k, t in steps.items() if k not in asset_ops)
    profile = {
        "events_logged": len(events),
        "steps": len(steps),
        "check_steps": sum(k not in asset_ops for k in steps),
        "seconds_in_asset_steps": round(in_assets, 3),
        "seconds_in_check_steps": round(in_checks, 3),
        # first to last event of the run, minus its steps: plan, run start and end, step hand-overs
        "seconds_between_steps": round(last - first - in_assets - in_checks, 3),
        "seconds_before_and_after_the_run": round(first - started + ended - last, 3),
    }
    return steps, profile


# -- the comparison -------------------------------------------------------------------------------------------

SIDES = ("sqlite", "memory", "direct")  # the Dagster side on each storage, and the peer
STORAGE = {
    "sqlite": "SQLite instance on disk (dagster dev's default)",
    "memory": "in-memory instance (DagsterInstance.ephemeral)",
}


def _compare(data: Path, kinds: list[str], cfg: Config, progress: Progress) -> list[Result]:
    import ray

    task = progress.add_task(f"dagster vs direct, {len(kinds)} kinds", total=2 + len(SIDES) * cfg.repeats)
    t0 = time.perf_counter()
    started = start_local_ray(num_cpus=2)  # one local Ray for every side, as the demo and the tests start it
    ray_start = time.perf_counter() - t0
    walls: dict[str, list[float]] = {side: [] for side in SIDES}
    step_runs: dict[str, list[Timings]] = {side: [] for side in SIDES}
    profiles: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    promoted: set[str] = set()
    warm: dict[str, float] = {}

    def one(side: str, label: str) -> None:
        with scratch_dir(f"dagster-{side}-{label}") as root, _quiet():
            root.mkdir(parents=True)
            if side == "direct":
                wall, steps, best = _direct(root, data, kinds)
            else:
                wall, steps, best, profile = _dagster(root, data, kinds, side)
        promoted.add(best)
        if label == "warmup":
            warm[side] = round(wall, 2)
        else:
            walls[side].append(wall)
            step_runs[side].append(steps)
            if side != "direct":
                profiles[side].append(profile)
        progress.advance(task)

    try:
        # warm-up, untimed: the first run in a process pays for imports, numba's compilations in cell-eval, the
        # first Ray tasks and Dagster's first job build, which would otherwise land on whichever side runs first
        for side in ("direct", "sqlite"):
            one(side, "warmup")
        for rep in range(cfg.repeats):  # rotate the order, so that drift (the other tenants' load) hits all
            for i in range(len(SIDES)):
                one(SIDES[(i + rep) % len(SIDES)], f"r{rep}")
    finally:
        if started:
            ray.shutdown()
    if len(promoted) != 1:
        raise RuntimeError(f"the sides promoted different kinds: {sorted(promoted)}")
    peer = median(walls["direct"])
    candidates = _candidates(kinds)
    common: dict[str, Any] = {
        "peer": PEER,
        "repeats": cfg.repeats,
        "kinds": kinds,
        "evaluated": candidates,
        "promoted_kind": next(iter(promoted)),
        "dataset": f"{PAPALEXI} + {HPA}",
        "timed_dagster": "add the dynamic partition + one dg.materialize of the selection with its checks "
        "(in-process executor)",
        "timed_direct": "ingest_atlas, ingest_hpa, train per kind, evaluate + check_gate per candidate, "
        "promote the best passing, write_catalog",
        "ray": "one local Ray (num_cpus=2, no dashboard) started before all clocks, joined by every step",
        "ray_init_seconds_excluded": round(ray_start, 3),
        "warmup_seconds_excluded": warm,
        "seconds_direct": [round(t, 2) for t in walls["direct"]],
        "direct_step_seconds_median": _median_steps(step_runs["direct"]),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    results = []
    for storage in ("sqlite", "memory"):
        ours = median(walls[storage])
        ratio = ours / peer
        results.append(
            Result(
                metric=f"demo graph through Dagster ({STORAGE[storage]}) vs direct calls: ingest, {len(kinds)} "
                f"kinds trained ({', '.join(kinds)}; latent-shift left out), {len(candidates)} evaluated, "
                "promotion, catalog",
                cellfarm=round(ours, 2),
                peer=round(peer, 2),
                ratio=round(ratio, 3),
                target=TARGET,
                met=check(ratio, TARGET),
                unit="s (cellfarm/peer, lower is better)",
                details=common
                | {
                    "instance": STORAGE[storage],
                    "seconds_dagster": [round(t, 2) for t in walls[storage]],
                    "dagster_step_seconds_median": _median_steps(step_runs[storage]),
                    "dagster_where_time_went": profiles[storage],
                },
            )
        )
    return results


def _median_steps(runs: list[Timings]) -> dict[str, float]:
    return {k: round(median([r[k] for r in runs if k in r]), 3) for k in runs[0]} if runs else {}


def run(cfg: Config, progress: Progress) -> list[Result]:
    data = shared_data()
    if data is None or not (data / PAPALEXI).is_file() or not (data / HPA).is_file():
        console.print(f"[yellow]skip[/] dagster: {PAPALEXI} or {HPA} not found (set CELLFARM_SHARED_DATA)")
        return []
    import lake

    ref = gene_reference()
    with _env(lake.ENV_GENE_REFERENCE, str(ref) if ref else None):
        return _compare(data, QUICK_KINDS if cfg.quick else KINDS, cfg, progress)
