"""`objects` of a run: a mitosis detector over the run's nuclear-channel frames, read back from OME-Zarr.

One row per detection (class ``mitosis``): its centroid and core area in pixels, the intensity inside the core
(a disk of the core's area around the centroid) and the detector's score. Writing replaces the run's rows, so
deriving the objects of a run twice leaves one set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import lake
from acquisition._mitosis import DetectionLike
from acquisition._policy import ClassicalDetector, MitosisDetector

__all__ = ["RunObjects", "detect_objects", "replace_objects"]

MITOSIS_CLASS = "mitosis"
_FRAME_COLUMNS = ["frame_id", "t", "c", "z", "channel", "image_uri"]


@dataclass(frozen=True)
class RunObjects:
    """What `detect_objects` found: the rows, how many frames it looked at, and which detector it was."""

    rows: pa.Table
    n_frames: int
    detector: str


def _intensities(plane: np.ndarray, found: Sequence[DetectionLike]) -> tuple[list[float], list[float]]:
    """Mean and max of the plane in a disk of each detection's core area around its centroid."""
    yy, xx = np.ogrid[: plane.shape[0], : plane.shape[1]]
    means, maxes = [], []
    for d in found:
        r = max(float(np.sqrt(max(d.area_px, 1) / np.pi)), 1.0)
        y0, y1 = max(int(d.y - r), 0), min(int(d.y + r) + 2, plane.shape[0])
        x0, x1 = max(int(d.x - r), 0), min(int(d.x + r) + 2, plane.shape[1])
        disk = (yy[y0:y1] - d.y) ** 2 + (xx[:, x0:x1] - d.x) ** 2 <= r * r
        values = plane[y0:y1, x0:x1][disk] if disk.any() else plane[int(d.y), int(d.x)].reshape(1)
        means.append(float(values.mean()))
        maxes.append(float(values.max()))
    return means, maxes


def detect_objects(
    target: lake.Lake, run_id: str, *, detector: MitosisDetector | None = None, channel: str = "GFP"
) -> RunObjects:
    """Run ``detector`` (default: the classical one) on every frame of ``run_id`` in ``channel``."""
    det = detector if detector is not None else ClassicalDetector()
    frames = target.read(
        "frames", columns=_FRAME_COLUMNS, filter=(pc.field("run_id") == run_id) & (pc.field("channel") == channel)
    ).sort_by([("image_uri", "ascending"), ("frame_id", "ascending")])
    cols: dict[str, list[object]] = {f.name: [] for f in lake.TABLES["objects"].schema}
    images: dict[str, lake.OmeZarrImage] = {}
    for f in frames.to_pylist():
        image = images.get(f["image_uri"]) or images.setdefault(f["image_uri"], lake.OmeZarrImage.open(f["image_uri"]))
        plane = image.read_plane(f["t"], f["c"], f["z"])
        found = det(plane)
        means, maxes = _intensities(plane, found)
        for k, (d, mean, peak) in enumerate(zip(found, means, maxes, strict=True)):
            for name, value in (
                ("run_id", run_id),
                ("frame_id", f["frame_id"]),
                ("object_id", k),
                ("centroid_x", float(d.x)),
                ("centroid_y", float(d.y)),
                ("area", float(d.area_px)),
                ("mean_intensity", mean),
                ("max_intensity", peak),
                ("class", MITOSIS_CLASS),
                ("score", float(d.score)),
            ):
                cols[name].append(value)
    rows = pa.table(cols, schema=lake.TABLES["objects"].schema)
    return RunObjects(rows, frames.num_rows, f"{det.name}:{det.version}")


def replace_objects(target: lake.Lake, run_id: str, rows: pa.Table) -> int:
    """Replace the `objects` rows of ``run_id`` with ``rows``; returns the table's new version.

    Delete then append: a reader between the two commits sees the run without objects, never twice over.
    """
    quoted = "'" + run_id.replace("'", "''") + "'"
    target.delete("objects", f"run_id = {quoted}")
    return target.append("objects", rows) if rows.num_rows else target.version("objects")
