"""The demo's model steps: every perturbation model kind trained and evaluated on a local Ray, the best one that
passes the gate promoted; the mitosis CNN trained on the digital twin and promoted past its own gate.

A second demo on the same lake reuses what the first trained on the same data (same dataset snapshot, same
held-out perturbations), so it adds no duplicate model versions.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

import lake
import models
from cellfarm._progress import RichProgress

__all__ = ["DEMO_HOLDOUT", "ModelStep", "train_evaluate_promote", "train_imaging_model"]

# Held-out Papalexi targets with a clear transcriptional effect (the models issue's evaluation split).
DEMO_HOLDOUT = ("BRD4", "ETV7", "IFNGR1", "JAK2", "MYC", "SMAD4")


@dataclass(frozen=True)
class ModelStep:
    """What the model step left: every evaluated version, and the one in production (None: none passed)."""

    evaluated: list[models.ModelRecord]
    production: models.ModelRecord | None

    def margin(self, record: models.ModelRecord) -> float:
        gate = record.metrics.get("evaluation", {}).get("gate", {})
        return float(gate.get("margin", math.nan))


def _reusable(target: lake.Lake, kind: str, dataset: str, holdout: Sequence[str] | None) -> models.ModelRecord | None:
    """The newest `kind` version trained on the lake's current copy of `dataset` with these held-out targets."""
    found = target.find_dataset(name=dataset)
    if found is None or holdout is None:
        return None
    now = {
        "dataset": dataset,
        "dataset_ids": [found["dataset_id"]],
        "soma_timestamp": target.committed_soma_timestamp(),
    }
    same = [
        r
        for r in models.list_models(target, kind)
        if all(r.trained_on.get(k) == v for k, v in now.items())
        and set(r.trained_on.get("split", {}).get("test_perturbations", []))
        | set(r.trained_on.get("unrepresented_holdout", []))
        == set(holdout)
    ]
    return max(same, key=lambda r: r.version) if same else None


def train_evaluate_promote(
    target: lake.Lake,
    dataset: str,
    *,
    holdout: Sequence[str] | None,
    kinds: Sequence[str] | None = None,
    console: Console,
) -> ModelStep:
    """Train each kind on `dataset` (or reuse a version trained on the same data), evaluate it with cell-eval
    against the baselines, and promote the version with the best gate margin that passes."""
    import ray

    kinds = list(kinds or models.kinds())
    # one local Ray for every training and evaluation (each would otherwise start and stop its own)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # control-mean is the gate's bar: trained (a baseline the lab keeps), and scored inside every evaluation
        bar = models.GATE_BASELINE
        done = [_train_and_evaluate(target, dataset, k, holdout, console, gate=k == bar) for k in kinds]
        evaluated = [r for r in done if r is not None]
    finally:
        if started:
            ray.shutdown()
    passing = [r for r in evaluated if models.check_gate(r).passed]
    if not passing:
        console.print("[yellow]no model beats the control-mean baseline: nothing promoted[/]")
        return ModelStep(evaluated, None)
    best = max(passing, key=lambda r: models.check_gate(r).margin)
    if best.stage == "production":
        console.print(f"{best.ref} stays in production (the best that passes the gate)", highlight=False)
        return ModelStep(evaluated, best)
    verdict = models.promote(target, best.ref)
    console.print(f"[bold green]promoted[/] {verdict.record.ref}: {verdict.explain()}", highlight=False)
    return ModelStep(evaluated, verdict.record)


def _train_and_evaluate(
    target: lake.Lake, dataset: str, kind: str, holdout: Sequence[str] | None, console: Console, *, gate: bool
) -> models.ModelRecord | None:
    record = _reusable(target, kind, dataset, holdout)
    if record is not None:
        console.print(f"{kind}: reusing {record.ref} (trained on the same data)", highlight=False)
    else:
        with console.status(f"training {kind} on {dataset}"):
            record = models.train(target, kind, dataset, holdout=list(holdout) if holdout else None, workers=2)
        console.print(f"{kind}: trained {record.ref}", highlight=False)
    if gate:
        return None
    if "evaluation" not in record.metrics:
        with RichProgress(console) as progress:
            models.evaluate(target, record.ref, progress=progress)
        record = models.resolve(target, record.ref)
    console.print(f"  gate: {models.check_gate(record).explain()}", highlight=False, soft_wrap=True)
    return record


def train_imaging_model(
    target: lake.Lake, *, out_dir: Path, options: dict[str, Any] | None = None, console: Console
) -> models.ModelRecord | None:
    """The mitosis CNN for the feedback loop: trained on twin plates, scored on held-out ones, promoted when it
    passes its gate. A production version already in the lake is kept (training is the slow part)."""
    from acquisition import detect_mitoses
    from acquisition.twin import frozen_plate
    from models.imaging import KIND, release_detector, train_mitosis_model

    registered = models.list_models(target, KIND)
    if current := [r for r in registered if r.stage == "production"]:
        console.print(f"imaging model: keeping {current[-1].ref} (production)", highlight=False)
        return current[-1]
    defaults = inspect.signature(train_mitosis_model).parameters
    wanted = {k: (options or {}).get(k, defaults[k].default) for k in ("n_frames", "n_val_frames", "seed")}
    if same := [r for r in registered if all(r.trained_on.get(k) == v for k, v in wanted.items())]:
        # trained the same way before and refused by the gate: training again would give the same model
        console.print(f"imaging model: {same[-1].ref} did not pass its gate; the classical detector serves")
        return None

    with RichProgress(console) as progress:
        release = release_detector(
            target,
            out_dir,
            plates=frozen_plate,
            baseline=detect_mitoses,
            progress=lambda p: progress("train mitosis-cnn (epochs)", p.epoch, p.epochs),
            **(options or {}),
        )
    if not release.passed:
        console.print(f"[yellow]imaging model {release.record.ref} not promoted[/]: {release.why}", highlight=False)
        return None
    console.print(f"[bold green]promoted[/] {release.record.ref}: {release.why}", highlight=False)
    return release.record
