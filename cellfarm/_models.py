"""What `cellfarm evaluate` prints: the summary table (model beside each baseline) and the gate's verdict."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from models import SUMMARY_METRICS, Evaluation, check_gate

__all__ = ["print_evaluation"]


def _fmt(value: float | None) -> str:
    return "NaN" if value is None or math.isnan(value) else f"{value:.4f}"


_HEADERS = {
    "overlap_at_N": "DES ↑",
    "discrimination_score_l1": "PDS ↑",
    "mae": "MAE ↓",
    "pearson_delta": "Pearson Δ ↑",
    "mse_delta": "MSE Δ ↓",
}


def print_evaluation(result: Evaluation, out: Console, err: Console) -> None:
    record = result.record
    names = ["model", *(n for n in result.summary["baselines"] if n in result.results)]
    metrics = [m for m in SUMMARY_METRICS if m in result.results["model"].summary]
    table = Table(
        "predictor",
        *(_HEADERS.get(m, m) for m in metrics),
        title=f"cell-eval on {len(result.perturbations)} held-out perturbations ({result.split} split)",
    )
    for n in names:
        label = f"[bold]{record.ref}[/]" if n == "model" else n
        table.add_row(label, *(_fmt(result.results[n].summary.get(m)) for m in metrics))
    out.print(table)
    score = result.summary.get("normalized_score")
    err.print(f"VCC score of {record.ref} against the cell-mean baseline: {_fmt(score)}", highlight=False)
    if result.fallbacks.get("model"):
        err.print(f"fell back to the mean effect for: {', '.join(result.fallbacks['model'])}", highlight=False)
    verdict = check_gate(record)
    colour = "green" if verdict.passed else "yellow"
    err.print(f"[bold {colour}]gate[/]: {verdict.explain()}", highlight=False)
    err.print(
        f"wrote {result.rows_written} evaluations rows, models.metrics of {record.ref}"
        + (f", plot {result.plot}" if result.plot else "")
        + f" ({result.wall_time_s:.1f} s)",
        highlight=False,
    )
