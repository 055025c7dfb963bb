"""A typed wrapper around cell-eval 0.8.2, the Virtual Cell Challenge's evaluator.

What X must hold: cell-eval expects **log1p-normalised expression** (`normalize_total` + `log1p`, as
`models._data.log_normalize` makes). It guesses the scale of each matrix on its own (`guess_is_lognorm`):

- any fractional value: log1p data, which must lie in [0, 15) or cell-eval refuses it;
- all values integral: raw counts, which cell-eval normalises to the median library size and log1p's
  (in place: this wrapper hands it a copy, so the caller's AnnData are never modified);
- `allow_discrete=True`: integral X is evaluated as is (DE then runs with `is_log1p=False`).

Both matrices must be on the same scale: a counts `real` against a log1p `pred` is refused here, because
cell-eval would normalise only one of them (to a median the other never saw). Pass log1p for both.

Metric names, exactly as cell-eval 0.8.2 writes them (profile `full` computes all of them; best value
in brackets; `normalized_score` skips the ones marked "none"):

    overlap_at_N                 [1] DES (VCC): overlap of the real DE genes (FDR < 0.05, ranked by |LFC|)
                                     with the predicted ones, N = the number of real DE genes
    overlap_at_50/100/200/500    [1] the same for the top k
    precision_at_N, _at_k        [1] precision of the predicted DE genes (N, 50, 100, 200, 500)
    de_spearman_sig              [1] Spearman of the number of DE genes across perturbations (one value)
    de_direction_match           [1] sign agreement of the LFC on the real DE genes
    de_spearman_lfc_sig          [1] Spearman of the LFC on the real DE genes
    de_sig_genes_recall          [1] recall of the real DE genes
    de_nsig_counts_real, _pred   [none] the number of DE genes
    pr_auc, roc_auc              [1] recovery of the real DE genes from the predicted p-values
    pearson_delta                [1] Pearson of the pseudobulk effect (pert - control), pred vs real
    mse, mae                     [0] error of the pseudobulk expression (mae: VCC)
    mse_delta, mae_delta         [0] error of the pseudobulk effect
    discrimination_score_l1      [1] PDS (VCC): 1 - normalised rank of the true perturbation among all real
                                     effects by L1 distance, the target gene left out
    discrimination_score_l2, _cosine  [1] the same by L2 / cosine distance
    pearson_edistance            [1] Pearson of the e-distances to control (one value for all)
    clustering_agreement         [1] AMI of Leiden clusters of perturbation centroids (one value for all)

Profiles: `vcc` = mae, discrimination_score_l1, overlap_at_N; `minimal` = pearson_delta, mse, mae,
discrimination_score_l1, overlap_at_N, precision_at_N, de_nsig_counts; `de` / `anndata` = the DE / the
expression metrics; `pds` = discrimination_score_l1. `anndata` and `pds` skip the DE step (the slow part).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import anndata as ad
import numba
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import scipy.sparse as sp
from cell_eval import MetricPipeline, MetricsEvaluator, metrics_registry, score_agg_metrics
from cell_eval._types import MetricBestValue
from cell_eval.utils import guess_is_lognorm

from models._errors import InvalidTrainingDataError
from models._vcc import VCC_METRICS

__all__ = ["VCC_METRICS", "CellEvalResult", "Profile", "margins", "normalized_score", "run_cell_eval"]

logger = logging.getLogger(__name__)

Profile = Literal["full", "minimal", "vcc", "de", "anndata", "pds"]

PER_PERTURBATION_SCHEMA = pa.schema([("perturbation", pa.string()), ("metric", pa.string()), ("value", pa.float64())])
_NO_DE_PROFILES = frozenset({"anndata", "pds"})
# Modules whose progress bars would write to stderr on every call.
_TQDM_MODULES = ("cell_eval._types._anndata", "pdex")
_T = TypeVar("_T")
# cell-eval's DE (pdex, numba-mwu) and clustering (umap, pynndescent) JIT-compile about 15 s of kernels in every
# new process, uncached; the Ray tasks of an evaluation are new processes. Turning numba's on-disk cache on for
# those kernels compiles them once per machine.
_JIT_MODULES = (
    "numba_mwu",
    "pdex._math",
    "umap.umap_",
    "umap.utils",
    "umap.sparse",
    "umap.distances",
    "pynndescent.utils",
    "pynndescent.distances",
    "pynndescent.sparse",
)
_Labels = np.ndarray[Any, np.dtype[np.str_]]


@dataclass(frozen=True)
class CellEvalResult:
    """One cell-eval run: per-perturbation metrics and their means over perturbations."""

    per_perturbation: pa.Table
    """Long table: perturbation (str), metric (str), value (float64; NaN where cell-eval had none)."""
    summary: dict[str, float]
    """metric -> mean over perturbations (the `mean` row of cell-eval's `agg_results`)."""
    profile: str
    perturbations: tuple[str, ...]
    wall_time_s: float
    missing_metrics: tuple[str, ...] = ()
    """Metrics of the profile that cell-eval failed to compute (it logs the error and drops them)."""


def run_cell_eval(
    real: ad.AnnData,
    pred: ad.AnnData,
    *,
    pert_col: str = "target_gene",
    control: str = "non-targeting",
    profile: Profile = "full",
    num_threads: int = 1,
    outdir: str | Path | None = None,
    allow_discrete: bool = False,
) -> CellEvalResult:
    """Evaluate `pred` against `real` with cell-eval's `MetricsEvaluator`.

    Both hold the same genes in the same order, the column `pert_col`, the same perturbations and the
    control cells (label `control`); X is log1p-normalised (see the module docstring for counts).
    `num_threads` caps the DE step's Numba threads (restored afterwards). `outdir` keeps cell-eval's files
    (real_de.csv, pred_de.csv, results.csv, agg_results.csv); by default a temporary folder is removed.
    Not thread-safe: run concurrent evaluations in separate processes.
    """
    if profile not in get_args(Profile):
        raise ValueError(f"unknown cell-eval profile {profile!r}; expected one of {', '.join(get_args(Profile))}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    start = time.perf_counter()
    _cache_numba_kernels()
    real_in, pred_in, perts = _prepare(real, pred, pert_col=pert_col, control=control, allow_discrete=allow_discrete)
    with contextlib.ExitStack() as stack:
        if outdir is None:
            # A folder that does not exist yet: cell-eval warns when its outdir already exists.
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cellfarm-celleval-"))) / "out"
        else:
            folder = Path(outdir)
        stack.enter_context(_quiet(num_threads))
        try:
            evaluator = MetricsEvaluator(
                adata_pred=pred_in,
                adata_real=real_in,
                control_pert=control,
                pert_col=pert_col,
                num_threads=num_threads,
                outdir=str(folder),
                allow_discrete=allow_discrete,
                skip_de=profile in _NO_DE_PROFILES,
            )
            # compute()'s annotation omits "pds", which the MetricPipeline it builds accepts.
            results, agg = evaluator.compute(profile=profile, write_csv=outdir is not None)  # type: ignore[arg-type]
        except ValueError as err:
            raise InvalidTrainingDataError(f"cell-eval rejected the data: {_one_line(err)}") from err
    per_perturbation = _long_table(results)
    return CellEvalResult(
        per_perturbation=per_perturbation,
        summary=_mean_row(agg),
        profile=profile,
        perturbations=perts,
        wall_time_s=time.perf_counter() - start,
        missing_metrics=_missing_metrics(profile, results.columns),
    )


def normalized_score(
    model: CellEvalResult,
    baseline: CellEvalResult,
    *,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Each metric normalised against the baseline by cell-eval's `score_agg_metrics`, plus `avg_score`.

    Best-is-0 metrics score `1 - model/baseline`, best-is-1 metrics `(model - baseline)/(1 - baseline)`;
    NaN becomes 0 and negatives are clipped to 0, so the baseline against itself scores 0 and a perfect
    model 1 (0 where either value is NaN, e.g. pr_auc when a perturbation has no real DE gene).
    `avg_score` is the mean over the scored metrics. `metrics=None` scores every metric of `model` that
    has a best value (not `de_nsig_counts_*`); `metrics=VCC_METRICS` is the Challenge score.
    """
    if metrics is None:
        names = [m for m in model.summary if _normalisable(m)]
        if not names:
            raise InvalidTrainingDataError(f"no metric of profile {model.profile!r} can be normalised")
    else:
        names = list(dict.fromkeys(metrics))
        bad = [m for m in names if not _normalisable(m)]
        if bad:
            raise InvalidTrainingDataError(f"cell-eval has no baseline normalisation for {', '.join(bad)}")
        absent = [m for m in names if m not in model.summary]
        if absent:
            raise InvalidTrainingDataError(f"the model's evaluation lacks {', '.join(absent)}")
    absent = [m for m in names if m not in baseline.summary]
    if absent:
        raise InvalidTrainingDataError(f"the baseline's evaluation lacks {', '.join(absent)}")
    with _quiet(None):
        scored = score_agg_metrics(_agg_frame(model.summary, names), _agg_frame(baseline.summary, names))
    values = dict(zip(scored["metric"].to_list(), scored["from_baseline"].to_list(), strict=True))
    return {str(m): float(v) for m, v in values.items()}


def margins(
    model: dict[str, float], baseline: dict[str, float], *, metrics: Sequence[str] = VCC_METRICS
) -> dict[str, float]:
    """How far `model` is ahead of `baseline` on each metric, signed, and their `mean`.

    The normalisation of `normalized_score` (best-is-0: `1 - model/baseline`; best-is-1:
    `(model - baseline)/(1 - baseline)`) without its clipping at 0, so a loss on one metric is not hidden by a
    win on another: the promotion gate asks for a positive `mean`. A metric either side lacks (NaN) counts 0.
    """
    bad = [m for m in metrics if not _normalisable(m)]
    if bad:
        raise InvalidTrainingDataError(f"cell-eval has no baseline normalisation for {', '.join(bad)}")
    out: dict[str, float] = {}
    for m in metrics:
        mv, bv = float(model.get(m, math.nan)), float(baseline.get(m, math.nan))
        if math.isnan(mv) or math.isnan(bv):
            out[m] = 0.0
            continue
        if metrics_registry.get_metric(m).best_value == MetricBestValue.ZERO:
            out[m] = 1.0 - mv / bv if bv > 0 else (0.0 if mv <= 0 else -1.0)
        else:
            out[m] = (mv - bv) / (1.0 - bv) if bv < 1 else (0.0 if mv >= 1 else mv - bv)
    out["mean"] = float(np.mean([out[m] for m in metrics])) if metrics else 0.0
    return out


@functools.cache
def _cache_numba_kernels() -> int:
    """Enable numba's on-disk cache for cell-eval's uncached kernels (once per process); returns how many."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    enabled = 0
    for name in _JIT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency of cell-eval that is absent: nothing to cache
            continue
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and isinstance(getattr(value, "_cache", None), NullCache):
                value.enable_caching()
                enabled += 1
    return enabled


def _prepare(
    real: ad.AnnData, pred: ad.AnnData, *, pert_col: str, control: str, allow_discrete: bool
) -> tuple[ad.AnnData, ad.AnnData, tuple[str, ...]]:
    """Checks cell-eval would fail on obscurely (or not at all), then light AnnData it may modify."""
    _check_genes(real, pred)
    real_labels = _labels(real, "real", pert_col)
    pred_labels = _labels(pred, "pred", pert_col)
    for which, labels in (("real", real_labels), ("pred", pred_labels)):
        if control not in set(labels):
            raise InvalidTrainingDataError(f"{which} has no control cells ({pert_col} == {control!r})")
    real_perts, pred_perts = set(real_labels) - {control}, set(pred_labels) - {control}
    if pred_perts - real_perts:
        raise InvalidTrainingDataError(f"pred has perturbations not in real: {_names(pred_perts - real_perts)}")
    if real_perts - pred_perts:
        raise InvalidTrainingDataError(f"real has perturbations missing from pred: {_names(real_perts - pred_perts)}")
    if not real_perts:
        raise InvalidTrainingDataError(f"no perturbation to evaluate: only control cells ({control!r})")
    real_x, pred_x = _matrix(real, "real"), _matrix(pred, "pred")
    real_log = _is_log(real_x, real.n_vars, "real", allow_discrete)
    pred_log = _is_log(pred_x, pred.n_vars, "pred", allow_discrete)
    if real_log != pred_log:
        raise InvalidTrainingDataError(
            f"real X looks like {_scale(real_log)} but pred X like {_scale(pred_log)}: pass both as log1p"
        )
    copy = not real_log and not allow_discrete  # cell-eval will normalise these in place
    return (
        _light(real_x, real_labels, real.var_names, pert_col, copy=copy),
        _light(pred_x, pred_labels, pred.var_names, pert_col, copy=copy),
        tuple(sorted(real_perts)),
    )


def _check_genes(real: ad.AnnData, pred: ad.AnnData) -> None:
    real_genes, pred_genes = real.var_names.to_numpy(str), pred.var_names.to_numpy(str)
    if np.array_equal(real_genes, pred_genes):
        return
    if len(real_genes) == len(pred_genes) and set(real_genes) == set(pred_genes):
        i = int(np.flatnonzero(real_genes != pred_genes)[0])
        raise InvalidTrainingDataError(
            f"pred has the genes of real in another order (position {i}: {pred_genes[i]!r} vs {real_genes[i]!r}); "
            "reorder with pred[:, real.var_names]"
        )
    only_real, only_pred = set(real_genes) - set(pred_genes), set(pred_genes) - set(real_genes)
    raise InvalidTrainingDataError(
        f"genes differ between real ({len(real_genes)}) and pred ({len(pred_genes)}): "
        f"{len(only_real)} only in real ({_names(only_real)}), {len(only_pred)} only in pred ({_names(only_pred)})"
    )


def _labels(adata: ad.AnnData, which: str, pert_col: str) -> _Labels:
    if pert_col not in adata.obs.columns:
        raise InvalidTrainingDataError(f"{which} has no obs column {pert_col!r}")
    column = cast(pd.Series, adata.obs[pert_col])
    missing = int(column.isna().sum())
    if missing:
        raise InvalidTrainingDataError(f"{missing} cells of {which} have no {pert_col!r}")
    return cast(_Labels, column.astype(str).to_numpy(dtype=str))


def _matrix(adata: ad.AnnData, which: str) -> sp.csr_matrix | np.ndarray[Any, Any]:
    """X as CSR or a dense ndarray (what cell-eval and pdex handle), checked finite and non-negative."""
    x: Any = adata.X
    if x is None:
        raise InvalidTrainingDataError(f"{which} has no X")
    matrix: sp.csr_matrix | np.ndarray[Any, Any] = sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)
    values = matrix.data if isinstance(matrix, sp.csr_matrix) else matrix
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise InvalidTrainingDataError(f"{which} X has non-numeric dtype {values.dtype}")
    if values.size:
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InvalidTrainingDataError(f"{which} X has {bad} NaN or infinite values")
        if values.min() < 0:
            raise InvalidTrainingDataError(
                f"{which} X has negative values (min {float(values.min()):.3g}); cell-eval needs log1p expression"
            )
    return matrix


def _is_log(x: sp.csr_matrix | np.ndarray[Any, Any], n_vars: int, which: str, allow_discrete: bool) -> bool:
    """cell-eval's own guess (log1p vs counts), on a throwaway AnnData so nothing is converted."""
    probe = ad.AnnData(X=x, var=pd.DataFrame(index=pd.RangeIndex(n_vars).astype(str)))
    try:
        return guess_is_lognorm(probe, validate=not allow_discrete)
    except ValueError as err:
        raise InvalidTrainingDataError(f"{which} X: {_one_line(err)}") from err


def _scale(is_log: bool) -> str:
    return "log1p data (fractional values)" if is_log else "raw counts (all integers)"


def _light(
    x: sp.csr_matrix | np.ndarray[Any, Any], labels: _Labels, genes: pd.Index, pert_col: str, *, copy: bool
) -> ad.AnnData:
    """X, the labels and the genes only: no obs/obsm/uns copies, and X copied only if cell-eval rewrites it."""
    if copy:
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float16 else np.float32
        x = x.astype(dtype, copy=True)
    obs = pd.DataFrame({pert_col: labels}, index=pd.RangeIndex(len(labels)).astype(str))
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes.to_numpy(str))))


def _long_table(results: pl.DataFrame) -> pa.Table:
    if results.is_empty():
        return PER_PERTURBATION_SCHEMA.empty_table()
    long = (
        results.with_columns(pl.exclude("perturbation").cast(pl.Float64))
        .unpivot(index="perturbation", variable_name="metric", value_name="value")
        .with_columns(pl.col("perturbation").cast(pl.String), pl.col("value").fill_null(float("nan")))
        .sort("perturbation", "metric")
    )
    return long.to_arrow().cast(PER_PERTURBATION_SCHEMA)


def _mean_row(agg: pl.DataFrame) -> dict[str, float]:
    if agg.is_empty():
        return {}
    row = agg.filter(pl.col("statistic") == "mean").drop("statistic").row(0, named=True)
    return {str(m): math.nan if v is None else float(v) for m, v in row.items()}


def _missing_metrics(profile: str, columns: Sequence[str]) -> tuple[str, ...]:
    # The pipeline's own metric list for the profile; a metric returning sub-metrics (de_nsig_counts)
    # appears as "<name>_<sub>" columns, which are not themselves registered names.
    expected: list[str] = MetricPipeline(profile=cast(Profile, profile))._metrics
    registered = set(metrics_registry.list_metrics())
    present = set(columns)

    def found(name: str) -> bool:
        return name in present or any(c.startswith(f"{name}_") and c not in registered for c in present)

    return tuple(m for m in expected if not found(m))


def _normalisable(metric: str) -> bool:
    try:
        best = metrics_registry.get_metric(metric).best_value
    except KeyError:
        return False
    return best in (MetricBestValue.ZERO, MetricBestValue.ONE)


def _agg_frame(summary: dict[str, float], names: Sequence[str]) -> pl.DataFrame:
    """The shape `score_agg_metrics` reads: a `statistic` column and one column per metric."""
    return pl.DataFrame({"statistic": ["mean"], **{m: [float(summary[m])] for m in names}})


@contextlib.contextmanager
def _quiet(num_threads: int | None) -> Iterator[None]:
    """No progress bars and no printed warnings (sent to DEBUG logging); Numba's thread count restored."""
    threads = int(numba.get_num_threads()) if num_threads is not None else None
    patched: list[tuple[Any, Any]] = []
    caught: list[warnings.WarningMessage] = []
    # cell-eval logs a WARNING per matrix with infinite fold changes (a gene absent from one side): expected here
    quiet_logger = logging.getLogger("cell_eval")
    level = quiet_logger.level
    quiet_logger.setLevel(logging.ERROR)
    try:
        for name in _TQDM_MODULES:
            module: Any = importlib.import_module(name)
            if hasattr(module, "tqdm"):
                patched.append((module, module.tqdm))
                module.tqdm = _no_progress
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        quiet_logger.setLevel(level)
        for module, original in patched:
            module.tqdm = original
        if threads is not None:
            numba.set_num_threads(threads)
        for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
            logger.debug("cell-eval warning: %s", message)


def _no_progress(iterable: Iterable[_T], *args: Any, **kwargs: Any) -> Iterable[_T]:
    return iterable


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _names(values: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(values)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more
