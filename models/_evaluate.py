"""`cellfarm evaluate MODEL[:VERSION]`: cell-eval on the perturbations the model never saw, against every baseline.

The model's registry row says what it was trained on (the data snapshot and the split), so the evaluation reads
exactly that data again, rebuilds the held-out set, and fits each baseline on the same training cells. Every
predictor's cells are scored by cell-eval in its own Ray task: cell-eval is not thread-safe, each task is a
separate worker process, and on a cluster they spread over its nodes. Results land in `evaluations` (one row per
perturbation x metric x baseline) and then in `models.metrics` (the summary and the promotion gate's verdict),
which is the commit point: a model counts as evaluated once its row says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lake
from models._base import KINDS, PerturbationModel, predict_cells
from models._data import CONTROL, F32, PerturbData, Snapshot, load_perturb_data
from models._errors import InvalidTrainingDataError
from models._features import build_gene_features
from models._registry import ModelRecord, resolve, update
from models._splits import Split
from models._train import BASELINES
from models._vcc import VCC_METRICS

if TYPE_CHECKING:  # cell-eval takes seconds to import: only the evaluation itself loads it
    from models._celleval import CellEvalResult, Profile

__all__ = ["CELL_MEAN", "GATE_BASELINE", "SUMMARY_METRICS", "Evaluation", "evaluate"]

GATE_BASELINE = "control-mean"
"""A model is promoted only when it beats this baseline (see `models._gate`)."""
CELL_MEAN = "perturbation-mean"
"""The Virtual Cell Challenge's cell-mean baseline: the reference of `normalized_score`."""
SUMMARY_METRICS = ("overlap_at_N", "discrimination_score_l1", "mae", "pearson_delta", "mse_delta")
"""The metrics shown in the CLI table and the plot (all of the profile's go to `models.metrics`)."""
MODEL = "model"
_PLOT_COLORS = ("#c44e52", "#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#937860")


@dataclass(frozen=True)
class Evaluation:
    """One `evaluate` run: the updated registry record and what was measured."""

    record: ModelRecord
    split: str
    perturbations: tuple[str, ...]
    results: dict[str, CellEvalResult]
    """"model" and each baseline's name -> its cell-eval result."""
    fallbacks: dict[str, list[str]]
    rows_written: int
    plot: Path | None
    wall_time_s: float

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.record.metrics["evaluation"])


def evaluate(
    target: lake.Lake,
    ref: str,
    *,
    baselines: Sequence[str] = BASELINES,
    profile: Profile = "full",
    ray_address: str | None = None,
    plot: bool = True,
    progress: lake.Progress = lake.null_progress,
) -> Evaluation:
    """Evaluate `ref` and every baseline on its held-out set; record and return the results."""
    from models._ray import ray_session

    start = time.perf_counter()
    record = resolve(target, ref)
    if record.kind not in KINDS:
        raise InvalidTrainingDataError(f"{record.ref} is a {record.kind} model, not a perturbation model")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InvalidTrainingDataError(f"unknown baseline(s) {', '.join(unknown)}; have {', '.join(BASELINES)}")
    if GATE_BASELINE not in baselines:
        baselines = [GATE_BASELINE, *baselines]  # the gate needs it
    trained_on = record.trained_on
    if "split" not in trained_on or "dataset" not in trained_on:
        raise InvalidTrainingDataError(f"{record.ref} records no training split: retrain it with `cellfarm train`")
    split = Split.from_dict(trained_on["split"])
    data = load_perturb_data(target, str(trained_on["dataset"]), at=Snapshot.from_dict(trained_on))
    progress("read", 1, 1)
    train_set, test_set = split.apply(data)
    predictors = {MODEL: record.load(), **_fit_baselines(target, data, train_set, baselines, skip=record)}
    progress("fit", len(predictors), len(predictors))
    real, preds, fallbacks = _predictions(test_set, predictors, seed=split.seed)
    with ray_session(ray_address):
        results = _run_on_ray(real, preds, data.gene_ids, profile=profile, progress=progress)
    if record.kind in baselines and record.kind not in results:
        results[record.kind] = results[MODEL]  # the same fit on the same split: evaluated once
        fallbacks[record.kind] = fallbacks[MODEL]
    rows = _rows(record, split.kind, results, baselines)
    if rows.num_rows:
        target.merge("evaluations", rows, mode="upsert")
    plot_path = _plot(target, record, results, baselines) if plot else None
    summary = _summary(record, split, results, baselines, fallbacks, plot_path, time.perf_counter() - start)
    record = ModelRecord(**{**record.__dict__, "metrics": {**record.metrics, "evaluation": summary}})
    update(target, record)  # the commit point
    return Evaluation(
        record=record,
        split=split.kind,
        perturbations=tuple(results[MODEL].perturbations),
        results=results,
        fallbacks=fallbacks,
        rows_written=rows.num_rows,
        plot=plot_path,
        wall_time_s=time.perf_counter() - start,
    )


def _fit_baselines(
    target: lake.Lake, data: PerturbData, train_set: PerturbData, baselines: Sequence[str], *, skip: ModelRecord
) -> dict[str, PerturbationModel]:
    wanted = [b for b in dict.fromkeys(baselines) if b != skip.kind]
    features = build_gene_features(target, data) if "linear" in wanted else None
    return {b: KINDS[b]().fit(train_set, features) for b in wanted}


def _predictions(
    test: PerturbData, predictors: dict[str, PerturbationModel], *, seed: int
) -> tuple[tuple[F32, list[str]], dict[str, tuple[F32, list[str]]], dict[str, list[str]]]:
    """The real held-out cells, and each predictor's cells: as many per perturbation, plus the same controls."""
    ctrl = test.is_control
    if not ctrl.any():
        raise InvalidTrainingDataError("the held-out set has no control cells to compare against")
    labels, counts = np.unique(test.perturbation[~ctrl], return_counts=True)
    if not len(labels):
        raise InvalidTrainingDataError("the held-out set has no perturbed cells")
    n_cells = dict(zip(labels.tolist(), counts.tolist(), strict=True))
    controls = test.X[ctrl]
    real = (np.concatenate([test.X[~ctrl], controls]), [*test.perturbation[~ctrl].tolist(), *[CONTROL] * len(controls)])
    preds, fallbacks = {}, {}
    for name, model in predictors.items():
        cells, cell_labels, fell_back = predict_cells(model, controls, n_cells, seed=seed)
        preds[name] = (np.concatenate([cells, controls]), [*cell_labels, *[CONTROL] * len(controls)])
        fallbacks[name] = fell_back
    return real, preds, fallbacks


def _cell_eval_task(
    real: tuple[F32, list[str]], pred: tuple[F32, list[str]], genes: list[str], profile: Profile
) -> CellEvalResult:
    """One predictor's cell-eval, in a Ray worker process."""
    import anndata as ad
    import pandas as pd

    from models._celleval import run_cell_eval

    def adata(x: F32, labels: list[str]) -> ad.AnnData:
        obs = pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(len(labels)).astype(str))
        return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))

    return run_cell_eval(
        adata(*real), adata(*pred), pert_col="perturbation", control=CONTROL, profile=profile, num_threads=1
    )


def _run_on_ray(
    real: tuple[F32, list[str]],
    preds: dict[str, tuple[F32, list[str]]],
    gene_ids: Any,
    *,
    profile: Profile,
    progress: lake.Progress,
) -> dict[str, CellEvalResult]:
    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(_cell_eval_task)
    real_ref = ray.put(real)  # shared by every task, stored once
    genes = [str(g) for g in gene_ids]
    pending = {task.remote(real_ref, pred, genes, profile): name for name, pred in preds.items()}
    results: dict[str, CellEvalResult] = {}
    progress("cell-eval", 0, len(pending))
    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            try:
                results[pending[ref]] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the task's own error, re-raised as ours
                cause = e.cause if e.cause is not None else e
                if isinstance(cause, InvalidTrainingDataError):
                    raise cause from None
                raise InvalidTrainingDataError(
                    f"cell-eval failed on {pending[ref]}: {' '.join(str(cause).split())[:200]}"
                ) from None
        progress("cell-eval", len(results), len(pending))
    return results


def _rows(record: ModelRecord, split: str, results: dict[str, CellEvalResult], baselines: Sequence[str]) -> pa.Table:
    """model x perturbation x metric, beside each baseline's value on the same perturbation and metric."""
    model = results[MODEL].per_perturbation
    parts = []
    for b in dict.fromkeys(baselines):
        base = results[b].per_perturbation.rename_columns(["perturbation", "metric", "baseline_value"])
        joined = model.join(base, ["perturbation", "metric"], join_type="left outer")
        n = joined.num_rows
        parts.append(
            pa.table(
                {
                    "name": pa.array([record.name] * n, pa.string()),
                    "version": pa.array([record.version] * n, pa.int64()),
                    "split": pa.array([split] * n, pa.string()),
                    "perturbation": joined["perturbation"],
                    "metric": joined["metric"],
                    "value": joined["value"],
                    "baseline": pa.array([b] * n, pa.string()),
                    "baseline_value": joined["baseline_value"],
                }
            )
        )
    table = pa.concat_tables(parts)
    # NaN (a metric cell-eval could not compute for a perturbation) is stored as NULL, which SQL aggregates skip
    for column in ("value", "baseline_value"):
        table = table.set_column(table.schema.get_field_index(column), column, _nan_to_null(table[column]))
    return table


def _nan_to_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    values = col.combine_chunks()
    return pa.chunked_array([pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)])


def _summary(
    record: ModelRecord,
    split: Split,
    results: dict[str, CellEvalResult],
    baselines: Sequence[str],
    fallbacks: dict[str, list[str]],
    plot: Path | None,
    wall_time_s: float,
) -> dict[str, Any]:
    from models._celleval import margins, normalized_score

    model = results[MODEL]
    against: dict[str, dict[str, Any]] = {
        b: {
            "summary": _finite(results[b].summary),
            "vcc_score": normalized_score(model, results[b], metrics=VCC_METRICS),
            "margin": margins(model.summary, results[b].summary),
            "fallbacks": fallbacks.get(b, []),
        }
        for b in dict.fromkeys(baselines)
    }
    gate = against[GATE_BASELINE]["margin"]
    return {
        "evaluated_at": datetime.now(UTC).isoformat(),
        "evaluator": "cell-eval 0.8.2",
        "profile": model.profile,
        "split": split.kind,
        "perturbations": list(model.perturbations),
        "summary": _finite(model.summary),
        "normalized_score": (against[CELL_MEAN]["vcc_score"]["avg_score"] if CELL_MEAN in against else None),
        "baselines": against,
        "fallbacks": fallbacks.get(MODEL, []),
        "gate": {"baseline": GATE_BASELINE, "margin": gate["mean"], "passed": gate["mean"] > 0},
        "plot": str(plot) if plot else None,
        "wall_time_s": round(wall_time_s, 2),
    }


def _finite(summary: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a metric cell-eval could not compute becomes null."""
    return {k: (None if np.isnan(v) else float(v)) for k, v in summary.items()}


def _plot(target: lake.Lake, record: ModelRecord, results: dict[str, CellEvalResult], baselines: Sequence[str]) -> Path:
    """One panel per summary metric: the model's bar beside each baseline's, the arrow saying which way is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [MODEL, *dict.fromkeys(baselines)]
    labels = [f"{record.name}:{record.version}", *names[1:]]
    metrics = [m for m in SUMMARY_METRICS if m in results[MODEL].summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [results[n].summary.get(metric, np.nan) for n in names]
        ax.bar(range(len(names)), values, color=[_PLOT_COLORS[i % len(_PLOT_COLORS)] for i in range(len(names))])
        # the gate's bar to beat, drawn across every panel
        ax.axhline(results[GATE_BASELINE].summary.get(metric, np.nan), color="#333333", linestyle="--", linewidth=0.8)
        better = "lower" if metric.startswith(("mae", "mse")) else "higher"
        ax.set_title(f"{metric}\n({better} is better)", fontsize=9)
        ax.set_xticks(range(len(names)), labels, rotation=40, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{record.ref} vs baselines: cell-eval on {len(results[MODEL].perturbations)} held-out perturbations")
    fig.tight_layout()
    out = lake.reports_dir(target.root) / "evaluations" / f"{record.name}-v{record.version}.png"  # local, even for s3
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
