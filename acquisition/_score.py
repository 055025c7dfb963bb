"""Scoring a run against the digital twin's ground truth: which divisions were caught, at what light dose."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lake

if TYPE_CHECKING:
    from acquisition._microscope import Microscope

__all__ = ["record_twin_truth", "score_divisions"]


def score_divisions(
    events: list[dict[str, Any]], frames: pa.Table, *, fov_um: tuple[float, float]
) -> tuple[list[bool], list[int]]:
    """For each division: was any frame taken of its place while it was under way, and how many.

    A frame "covers" a division when the division's position lies in the frame's field of view
    (`fov_um` = width, height, centred on the frame's stage position) and the frame was acquired between
    the start and the end of mitosis.
    """
    if frames.num_rows == 0 or not events:
        return [False] * len(events), [0] * len(events)
    fx = np.asarray(frames["x_um"].fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=float)
    fy = np.asarray(frames["y_um"].fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=float)
    at = pc.cast(frames["acquired_at"], pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    half_w, half_h = fov_um[0] / 2, fov_um[1] / 2
    imaged, counts = [], []
    for ev in events:
        start = ev["at"].timestamp()
        end = ev["end_at"].timestamp() if ev.get("end_at") is not None else start
        hit = (np.abs(fx - ev["x_um"]) <= half_w) & (np.abs(fy - ev["y_um"]) <= half_h) & (at >= start) & (at <= end)
        n = int(hit.sum())
        imaged.append(n > 0)
        counts.append(n)
    return imaged, counts


def _in_any_field(ev: dict[str, Any], fields: np.ndarray, fov_um: tuple[float, float]) -> bool:
    if fields.size == 0:
        return False
    return bool(
        np.any(
            (np.abs(fields[:, 0] - ev["x_um"]) <= fov_um[0] / 2) & (np.abs(fields[:, 1] - ev["y_um"]) <= fov_um[1] / 2)
        )
    )


def record_twin_truth(
    target: lake.Lake, run_id: str, microscope: Microscope, *, started_at: datetime
) -> dict[str, Any]:
    """Write the twin's events for the fields this run looked at into `twin_events`; return the run's score."""
    sample = microscope.sample
    assert sample is not None
    core = microscope.core
    fov_um = (core.getImageWidth() * core.getPixelSizeUm(), core.getImageHeight() * core.getPixelSizeUm())
    frames = target.read(
        "frames",
        columns=["x_um", "y_um", "acquired_at", "light_power", "exposure_ms"],
        filter=pc.field("run_id") == run_id,
    )
    fields = (
        np.unique(
            np.column_stack(
                [
                    np.asarray(frames["x_um"].fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=float),
                    np.asarray(frames["y_um"].fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=float),
                ]
            ),
            axis=0,
        )
        if frames.num_rows
        else np.empty((0, 2))
    )
    rows: list[dict[str, Any]] = []
    for e in sample.events():
        if e.wall_time < started_at:  # a sample that outlives runs: earlier events belong to earlier runs
            continue
        ev: dict[str, Any] = {
            "run_id": run_id,
            "kind": e.kind,
            "cell_id": int(e.cell_id),
            "parent_id": e.parent_id,
            "sim_time_s": e.sim_time_s,
            "end_sim_time_s": getattr(e, "end_sim_time_s", None),
            "at": e.wall_time,
            "end_at": getattr(e, "end_wall_time", None),
            "x_um": e.x_um,
            "y_um": e.y_um,
            "dose": e.dose,
        }
        if _in_any_field(ev, fields, fov_um):
            rows.append(ev)
    divisions = [r for r in rows if r["kind"] == "division"]
    imaged, counts = score_divisions(divisions, frames, fov_um=fov_um)
    for r, hit in zip(divisions, imaged, strict=True):
        r["imaged"] = hit
    if rows:
        target.append("twin_events", rows)
    health = sample.health()
    return {
        "divisions": len(divisions),
        "divisions_imaged": int(sum(imaged)),
        "frames_during_mitosis": int(sum(counts)),
        "arrests": sum(1 for r in rows if r["kind"] == "arrest"),
        "deaths": sum(1 for r in rows if r["kind"] == "death"),
        **{f"health_{k}": v for k, v in health.items()},
    }
