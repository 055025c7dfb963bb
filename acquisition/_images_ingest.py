"""Import existing images (OME-TIFF, Micro-Manager MMStack, OME-Zarr, PNG/TIFF) into the image store and tables.

One import is one acquisition run, ``import-<sha256[:16]>``, with one OME-Zarr image per stage position.
Order of writes, so that a crash leaves nothing a reader can see (frames and objects are visible in SQL only once
their run row is; an import writes that row last but one):
validate everything -> images -> ``frames`` -> ``objects`` -> ``acquisition_runs`` -> the ``datasets`` row.
Under the ingest lock, the next import first removes every import run whose dataset was never registered.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import ndimage

from acquisition._image_readers import ImageReader, Position, open_image, read_label_image, source_stem
from acquisition._qc import frame_qc
from lake import (
    InvalidInputError,
    Lake,
    LakeError,
    OmeZarrImage,
    Progress,
    delete_images,
    ingest_transaction,
    list_images,
    null_progress,
    resolve_source,
    sha256_file,
    sha256_files,
)

__all__ = ["CRASH_ENV", "OBJECT_ID_STRIDE", "ImageIngest", "ingest_images", "mask_class"]

# Object ids are unique within a frame across masks: object_id = mask_index * OBJECT_ID_STRIDE + label, so the
# first mask's ids are its labels and label = object_id % OBJECT_ID_STRIDE.
OBJECT_ID_STRIDE = 1_000_000
# Tests kill the import at a named point (images, frames, objects, run) to check what a crash leaves behind.
CRASH_ENV = "CELLFARM_TEST_CRASH_AFTER"
_PREFIX = "import-"  # run ids of imports: import-<sha256[:16]>, the dataset id after the prefix


@dataclass(frozen=True)
class ImageIngest:
    """What an image import did; ``skipped`` when the same content (sha256) was imported before."""

    run_id: str
    dataset_id: str
    n_frames: int
    n_objects: int
    n_positions: int
    images: tuple[str, ...]
    skipped: bool


@dataclass(frozen=True)
class _Mask:
    path: Path
    klass: str
    labels: np.ndarray


def mask_class(path: Path) -> str:
    """The object class a label image holds, from its file name ("nucle" is checked first: "cellpose_nuclei")."""
    name = path.name.lower()
    return "nucleus" if "nucle" in name else "cell" if "cell" in name else "object"


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- source and content hash -----------------------------------------------------------------------------------


def _locate(source: str | os.PathLike[str], lake: Lake, progress: Progress) -> tuple[Path, str]:
    """A local path (file or folder) as is; an http(s) URL downloaded into the lake's cache like an atlas."""
    text = str(source)
    if urlparse(text).scheme in ("http", "https"):
        src = resolve_source(text, cache_dir=lake.settings.cache_dir, progress=progress)
        return src.path, src.uri
    path = Path(urlparse(text).path if text.startswith("file://") else text).expanduser().resolve()
    if not path.exists():
        raise InvalidInputError(f"no such file or folder: {text}")
    return path, text if text.startswith("file://") else str(path)


def _content_sha(reader: ImageReader, masks: Sequence[Path], progress: Progress) -> str:
    """The source's hash, combined with the masks' hashes when there are masks (same image, other masks: a new
    dataset)."""
    sha = sha256_files(reader.root, reader.files, progress=progress)
    if not masks:
        return sha
    parts = [sha, *(sha256_file(m, progress=progress) for m in masks)]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


# -- validation before any write -------------------------------------------------------------------------------


def _load_masks(paths: Sequence[Path], reader: ImageReader) -> list[_Mask]:
    if not paths:
        return []
    if len(reader.positions) != 1:
        raise InvalidInputError(
            f"{reader.path.name}: masks need a single-position image, this one has {len(reader.positions)}"
        )
    spec = reader.positions[0].spec
    out = []
    for path in paths:
        labels = read_label_image(path)
        if labels.shape != (spec.y, spec.x):
            raise InvalidInputError(
                f"{path.name}: mask shape {labels.shape} differs from image {reader.path.name} ({spec.y}, {spec.x})"
            )
        if labels.size and int(labels.max()) >= OBJECT_ID_STRIDE:
            raise InvalidInputError(f"{path.name}: labels must be below {OBJECT_ID_STRIDE}")
        out.append(_Mask(path, mask_class(path), labels))
    return out


def _dataset_name(lake: Lake, name: str | None, path: Path, sha: str) -> str:
    """The given name (which must be free), else the file's stem, made unique with the hash if it is taken."""
    chosen = name or source_stem(path)
    if lake.find_dataset(name=chosen) is None:
        return chosen
    if name is not None:
        raise InvalidInputError(f"a dataset named {name!r} already exists with other content; pass another name")
    return f"{chosen}-{sha[:8]}"


# -- frames ----------------------------------------------------------------------------------------------------


def _acquisition_order(positions: Sequence[Position]) -> list[tuple[int, int]]:
    """(position, plane index) in acquisition order: by time when every plane has one (a multi-position time
    lapse interleaves positions), else position by position in storage order."""
    keys = [(p, i) for p, pos in enumerate(positions) for i in range(len(pos.planes))]
    if all(pl.acquired_at is not None for pos in positions for pl in pos.planes):
        keys.sort(key=lambda k: (positions[k[0]].planes[k[1]].acquired_at, k))
    return keys


def _frame_row(
    run_id: str, frame_id: int, p: int, pos: Position, i: int, uri: str, plane: np.ndarray
) -> dict[str, Any]:
    pl = pos.planes[i]
    qc = frame_qc(plane, bit_depth=_camera_bits(pos, plane.dtype))
    return {
        "run_id": run_id, "frame_id": frame_id, "t": pl.t, "p": p, "c": pl.c, "z": pl.z, "well": pos.well,
        "x_um": pl.x_um, "y_um": pl.y_um, "z_um": pl.z_um, "channel": pos.channels[pl.c],
        "exposure_ms": pl.exposure_ms, "light_power": None, "acquired_at": pl.acquired_at, "image_uri": uri,
        "shape": [pos.spec.y, pos.spec.x], "dtype": pos.spec.dtype,
        "mean": qc.mean, "max": qc.max, "saturated_frac": qc.saturated_frac, "focus_score": qc.focus_score,
    }  # fmt: skip


def _camera_bits(pos: Position, dtype: np.dtype[Any]) -> int | None:
    """The camera's bit depth when it is below the dtype's (a 12-bit camera in uint16 saturates at 4095)."""
    bits = pos.bit_depth
    return bits if bits and dtype.kind == "u" and bits < dtype.itemsize * 8 else None


def _create_image(uri: str, pos: Position, source: Path) -> OmeZarrImage:
    try:
        return OmeZarrImage.create(uri, pos.spec)
    except ValueError as e:  # zarr refuses a layout (e.g. a plane size the store's sharding cannot split)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LakeError(f"{source.name}: the image store cannot hold a {pos.spec.y}x{pos.spec.x} image: {msg}") from e


def _write_images(
    lake: Lake, reader: ImageReader, run_id: str, progress: Progress
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Write every plane into one OME-Zarr per position; returns the frame rows and the first plane of
    position 0 (what masks are measured on)."""
    order = _acquisition_order(reader.positions)
    frame_ids = {key: n for n, key in enumerate(order)}
    first = next(k for k in order if k[0] == 0)
    rows: list[dict[str, Any]] = []
    first_plane: np.ndarray | None = None
    for p, pos in enumerate(reader.positions):
        uri = lake.settings.image_uri(run_id, f"p{p:03d}")
        image = _create_image(uri, pos, reader.path)
        for i, pl in enumerate(pos.planes):
            plane = reader.read_plane(p, pl.t, pl.c, pl.z)
            image.write_plane(pl.t, pl.c, pl.z, plane)
            rows.append(_frame_row(run_id, frame_ids[(p, i)], p, pos, i, uri, plane))
            if (p, i) == first:
                first_plane = plane
            progress("write images", len(rows), len(order))
        image.close()
    rows.sort(key=lambda r: int(r["frame_id"]))
    return rows, first_plane


# -- objects ---------------------------------------------------------------------------------------------------


def _objects(run_id: str, frame_id: int, plane: np.ndarray, masks: Sequence[_Mask]) -> pa.Table:
    """One row per label of each mask: centroid and area in pixels, intensity over the plane (vectorised)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("id", "cx", "cy", "area", "mean", "max")}
    classes: list[str] = []
    for k, mask in enumerate(masks):
        ids = np.unique(mask.labels)
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        ones = np.ones(mask.labels.shape, dtype=np.uint8)
        centroids = np.asarray(ndimage.center_of_mass(ones, mask.labels, ids), dtype=np.float64).reshape(-1, 2)
        parts["id"].append(ids.astype(np.int64) + k * OBJECT_ID_STRIDE)
        parts["cy"].append(centroids[:, 0])
        parts["cx"].append(centroids[:, 1])
        parts["area"].append(np.asarray(ndimage.sum_labels(ones, mask.labels, ids), dtype=np.float64))
        parts["mean"].append(np.asarray(ndimage.mean(plane, mask.labels, ids), dtype=np.float64))
        parts["max"].append(np.asarray(ndimage.maximum(plane, mask.labels, ids), dtype=np.float64))
        classes += [mask.klass] * ids.size
    cat = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
    n = len(classes)
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "frame_id": pa.array(np.full(n, frame_id, dtype=np.int64)),
            "object_id": pa.array(cat["id"].astype(np.int64)),
            "centroid_x": pa.array(cat["cx"]),
            "centroid_y": pa.array(cat["cy"]),
            "area": pa.array(cat["area"]),
            "mean_intensity": pa.array(cat["mean"]),
            "max_intensity": pa.array(cat["max"]),
            "class": pa.array(classes, pa.string()),
            "score": pa.array(np.ones(n)),  # a reference segmentation
        }
    )


# -- the run's lifecycle ---------------------------------------------------------------------------------------


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _remove_run(lake: Lake, run_id: str) -> None:
    """Remove every trace of a run: rows in its tables (a no-op commit-free delete when there are none) and its
    images. Called before an import writes (a crashed attempt's leftovers) and when it fails."""
    for table in ("acquisition_runs", "objects", "frames"):  # the run row first: its rows turn invisible at once
        lake.delete(table, f"run_id = {_sql(run_id)}")
    delete_images(lake.settings.uri("images", run_id))


def _recover_imports(lake: Lake) -> list[str]:
    """Remove the runs of imports that never registered their dataset (killed between their first write and the
    `datasets` row), whatever source they were importing. Only under the ingest lock: no import is then live,
    and live acquisitions never use the ``import-`` prefix."""
    registered = {f"{_PREFIX}{d}" for d in lake.datasets(kind="images")["dataset_id"].to_pylist()}
    runs = lake.read("acquisition_runs", columns=["run_id"], filter=pc.field("microscope_id") == "import")
    found = set(runs["run_id"].to_pylist())
    for table in ("frames", "objects"):
        found |= {p["run_id"] for p in lake.table(table).partitions() if str(p["run_id"]).startswith(_PREFIX)}
    found |= {name for name in list_images(lake.settings.uri("images")) if name.startswith(_PREFIX)}
    orphans = sorted(found - registered)
    for run_id in orphans:
        _remove_run(lake, run_id)
    return orphans


def _skipped(lake: Lake, done: dict[str, Any]) -> ImageIngest:
    run_id = f"{_PREFIX}{done['dataset_id']}"
    frames = lake.read("frames", columns=["image_uri"], filter=pc.field("run_id") == run_id)
    objects = lake.read("objects", columns=["run_id"], filter=pc.field("run_id") == run_id)
    images = tuple(sorted(set(frames["image_uri"].to_pylist())))
    return ImageIngest(
        run_id=run_id,
        dataset_id=str(done["dataset_id"]),
        n_frames=int(done["n_obs"] or 0),
        n_objects=objects.num_rows,
        n_positions=len(images),
        images=images,
        skipped=True,
    )


def ingest_images(
    lake: Lake,
    source: str | os.PathLike[str],
    *,
    masks: Sequence[str | os.PathLike[str]] = (),
    name: str | None = None,
    progress: Progress = null_progress,
) -> ImageIngest:
    """Import an image source (and optional label masks) as one run. The same content twice is a no-op."""
    lake.ensure_writable()
    path, uri = _locate(source, lake, progress)
    mask_paths = [_locate(m, lake, progress)[0] for m in masks]
    with open_image(path) as reader:
        sha = _content_sha(reader, mask_paths, progress)
        if (done := lake.find_dataset(sha256=sha)) is not None:
            return _skipped(lake, done)
        loaded = _load_masks(mask_paths, reader)  # every check before the first write
        dataset = {"dataset_id": sha[:16], "name": _dataset_name(lake, name, path, sha), "kind": "images",
                   "source_uri": uri, "sha256": sha, "n_vars": 0, "soma_timestamp": None}  # fmt: skip
        run_id = f"{_PREFIX}{sha[:16]}"
        with ingest_transaction(lake):
            if (done := lake.find_dataset(sha256=sha)) is not None:  # a concurrent import won
                return _skipped(lake, done)
            _recover_imports(lake)  # this source's crashed attempt included
            try:
                written = _write_run(lake, reader, loaded, run_id, progress)
                _register(lake, reader, written, dataset)
            except BaseException:
                _remove_run(lake, run_id)
                raise
            progress("commit", 1, 1)
    return ImageIngest(
        run_id=run_id,
        dataset_id=sha[:16],
        n_frames=written.n_frames,
        n_objects=written.n_objects,
        n_positions=len(written.images),
        images=written.images,
        skipped=False,
    )


@dataclass(frozen=True)
class _Written:
    run_id: str
    started: datetime
    n_frames: int
    n_objects: int
    images: tuple[str, ...]


def _write_run(lake: Lake, reader: ImageReader, masks: Sequence[_Mask], run_id: str, progress: Progress) -> _Written:
    """Images, then ``frames`` in one append, then ``objects`` in one append; nothing of it is visible yet."""
    started = datetime.now(UTC)
    rows, first_plane = _write_images(lake, reader, run_id, progress)
    _crash_point("images")
    lake.append("frames", rows)
    _crash_point("frames")
    n_objects = 0
    if masks and first_plane is not None:
        first_frame = min(int(r["frame_id"]) for r in rows if r["p"] == 0)
        objects = _objects(run_id, first_frame, first_plane, masks)
        if objects.num_rows:
            lake.append("objects", objects)
        n_objects = objects.num_rows
    _crash_point("objects")
    images = tuple(lake.settings.image_uri(run_id, f"p{p:03d}") for p in range(len(reader.positions)))
    return _Written(run_id, started, len(rows), n_objects, images)


def _register(lake: Lake, reader: ImageReader, written: _Written, dataset: dict[str, Any]) -> None:
    """The run row (frames and objects turn visible in SQL), then the dataset row: the commit point."""
    summary = {
        "format": reader.format,
        "source": dataset["source_uri"],
        "dataset_id": dataset["dataset_id"],
        "positions": len(reader.positions),
        "objects": written.n_objects,
        "files": len(reader.files),
    }
    run = {
        "run_id": written.run_id,
        "microscope_id": "import",
        "plan": None,
        "started_at": written.started,
        "ended_at": datetime.now(UTC),
        "status": "completed",
        "policy": None,
        "n_frames": written.n_frames,
        "summary": json.dumps(summary),
    }
    lake.merge("acquisition_runs", [run], mode="upsert")
    _crash_point("run")
    lake.register_dataset({**dataset, "n_obs": written.n_frames, "ingested_at": datetime.now(UTC)})
