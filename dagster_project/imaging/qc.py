"""A run's QC from its `frames` rows: per position and channel, and the frame metrics over time (a plot)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lake

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["QC_COLUMNS", "qc_plot", "qc_summary", "run_frames", "run_row"]

QC_COLUMNS = ["frame_id", "p", "c", "t", "z", "channel", "acquired_at", "mean", "max", "saturated_frac", "focus_score"]


def run_row(target: lake.Lake, run_id: str) -> dict[str, Any] | None:
    rows = target.read("acquisition_runs", filter=pc.field("run_id") == run_id).to_pylist()
    return rows[0] if rows else None


def run_frames(target: lake.Lake, run_id: str, columns: list[str] | None = None) -> pa.Table:
    return target.read("frames", columns=columns or QC_COLUMNS, filter=pc.field("run_id") == run_id)


def qc_summary(frames: pa.Table) -> tuple[pa.Table, dict[str, float]]:
    """Frames per position x channel with their mean, max, saturation and focus; and run-wide figures."""
    per = (
        frames.group_by(["p", "channel"])
        .aggregate(
            [
                ("frame_id", "count"),
                ("mean", "mean"),
                ("max", "max"),
                ("saturated_frac", "mean"),
                ("saturated_frac", "max"),
                ("focus_score", "mean"),
            ]
        )
        .rename_columns(["p", "channel", "frames", "mean", "max", "saturated_frac_mean", "saturated_frac_max", "focus"])
        .sort_by([("p", "ascending"), ("channel", "ascending")])
    )
    focus = np.asarray(frames["focus_score"].drop_null().to_numpy(zero_copy_only=False), dtype=float)
    q = np.quantile(focus, [0.1, 0.5, 0.9]) if focus.size else np.full(3, np.nan)
    overall = {
        "mean": float(pc.mean(frames["mean"]).as_py() or 0.0),
        "max": float(pc.max(frames["max"]).as_py() or 0.0),
        "saturated_frac_mean": float(pc.mean(frames["saturated_frac"]).as_py() or 0.0),
        "saturated_frac_max": float(pc.max(frames["saturated_frac"]).as_py() or 0.0),
        "focus_p10": float(q[0]),
        "focus_p50": float(q[1]),
        "focus_p90": float(q[2]),
    }
    return per, overall


def qc_plot(frames: pa.Table, run_id: str) -> Figure:
    """Focus score and mean intensity over the run's time, one line per position and channel."""
    from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend in a worker

    fig = Figure(figsize=(9, 3.2))
    ax_focus, ax_mean = fig.subplots(1, 2)
    df = frames.select(["p", "channel", "acquired_at", "mean", "focus_score"]).to_pandas()
    start = df["acquired_at"].min()
    df["seconds"] = (df["acquired_at"] - start).dt.total_seconds()
    for (p, channel), g in df.sort_values("seconds").groupby(["p", "channel"], dropna=False):
        label = f"p{p} {channel}"
        ax_focus.plot(g["seconds"], g["focus_score"], marker=".", label=label)
        ax_mean.plot(g["seconds"], g["mean"], marker=".", label=label)
    ax_focus.set(title="focus score", xlabel="s since the first frame")
    ax_mean.set(title="mean intensity (ADU)", xlabel="s since the first frame")
    ax_mean.legend(fontsize="x-small", loc="best")
    fig.suptitle(run_id, fontsize="small")
    return fig
