"""The image store: one OME-Zarr 0.5 multiscale image (t, c, z, y, x) per run and position.

Planes are written one at a time as they arrive and read whole (viewers, QC, training crops), so a plane is the
unit of storage: one chunk, one file per plane and level. Level 1 is a 2x mean downsample for quick looks. The
time axis grows as frames arrive (feedback can add time points to a position), and `close()` trims it to what
was written.

Chunks are encoded and written here directly rather than through zarr's array API: the bytes are the same (the
bytes codec, then blosc), but the compressor releases the GIL and no Python event loop runs per plane. A
`PlaneWriter` is that write as plain data: the acquisition's worker processes write into images their parent
created (:mod:`acquisition._planes`).

An image may live on ``s3://``: zarr opens it through fsspec (s3fs) and planes are put as objects, with the
store's endpoint and keys from the environment (:mod:`lake._storage`). A local image stays plain file writes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec
from zarr.errors import ContainsArrayError, ContainsGroupError

from lake._errors import InvalidInputError, LakeError
from lake._storage import filesystem, fsspec_options, is_remote

__all__ = [
    "ImageSpec",
    "OmeZarrImage",
    "PlaneWriter",
    "chunk_exists",
    "delete_images",
    "downsample2",
    "downsample2_blocks",
    "list_images",
]

AXES = ("t", "c", "z", "y", "x")
# lz4 at level 1 on bit planes: a camera's noisy low bits stay apart from its mostly constant high ones. On the
# twin's 2048x2048 uint16 planes that stores 3.6x smaller at 6.4 ms per plane (encode and write), against 2.1x
# and 9.3 ms with byte shuffle, and the writer must keep up with the camera.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
_CODECS: dict[int, Blosc] = {}
_DS_ROWS = 128


def _encode(plane: np.ndarray) -> bytes:
    """What zarr's (bytes little-endian, blosc) pipeline stores for this plane."""
    size = plane.dtype.itemsize
    codec = _CODECS.get(size) or _CODECS.setdefault(size, Blosc(cname="lz4", clevel=1, shuffle=Blosc.BITSHUFFLE))
    data = np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder("<"))
    out: bytes = codec.encode(data)
    return out


@dataclass(frozen=True)
class ImageSpec:
    """What an image holds; `t` is the initial size of the growable time axis."""

    t: int
    c: int
    z: int
    y: int
    x: int
    dtype: str = "uint16"
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    t_interval_s: float | None = None
    channel_names: tuple[str, ...] = ()
    levels: int = 2
    name: str = "image"

    def __post_init__(self) -> None:
        if min(self.t, self.c, self.z, self.y, self.x) < 1:
            raise InvalidInputError(f"image shape must be positive, got {self.shape}")
        if self.channel_names and len(self.channel_names) != self.c:
            raise InvalidInputError(f"{len(self.channel_names)} channel names for {self.c} channels")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.t, self.c, self.z, self.y, self.x)


def downsample2(plane: np.ndarray) -> np.ndarray:
    """2x2 mean of a plane (odd edges dropped), in the plane's dtype."""
    h, w = plane.shape[0] // 2, plane.shape[1] // 2
    if h == 0 or w == 0:
        return plane
    out = np.empty((h, w), plane.dtype)
    for _ in downsample2_blocks(plane, out):
        pass
    return out


def downsample2_blocks(plane: np.ndarray, out: np.ndarray) -> Iterator[np.ndarray]:
    """Bin a plane of at least 2x2 pixels into `out` (`downsample2`'s shape and dtype) a block of rows at a time,
    yielding each block of the plane's rows as soon as it is binned; together the blocks hold every row (an odd last
    one too), whole. A caller's own pass over a block then finds it in cache, not in memory: the QC of a 2048x2048
    plane reads it once for the binning, its maximum and its sum, instead of three times."""
    h, w = plane.shape[0] // 2 * 2, plane.shape[1] // 2 * 2
    if h == 0 or w == 0 or out.shape != (h // 2, w // 2):
        raise ValueError(f"cannot bin a {plane.shape} plane into {out.shape}")
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        # integer sums (row pairs, then column pairs): several times faster than a float mean over a reshaped
        # view; in blocks of rows, so that the uint32 temporaries stay in cache
        rows = np.empty((_DS_ROWS // 2, w), np.uint32)
        acc = np.empty((_DS_ROWS // 2, w // 2), np.uint32)
        for r0 in range(0, h, _DS_ROWS):
            n = min(_DS_ROWS, h - r0) // 2
            np.add(plane[r0 : r0 + 2 * n : 2, :w], plane[r0 + 1 : r0 + 2 * n : 2, :w], out=rows[:n], dtype=np.uint32)
            np.add(rows[:n, 0:w:2], rows[:n, 1:w:2], out=acc[:n])
            acc[:n] += 2  # round half up, like the mean would
            acc[:n] >>= 2
            out[r0 // 2 : r0 // 2 + n] = acc[:n]
            yield plane[r0 : r0 + 2 * n]
        if h < plane.shape[0]:
            yield plane[h:]
        return
    blocks = plane[:h, :w].reshape(h // 2, 2, w // 2, 2)
    out[...] = blocks.mean(axis=(1, 3), dtype=np.float32).astype(plane.dtype)
    yield plane


def _level_shape(spec: ImageSpec, level: int) -> tuple[int, int, int, int, int]:
    f = 2**level
    return (spec.t, spec.c, spec.z, max(spec.y // f, 1), max(spec.x // f, 1))


def _multiscales(spec: ImageSpec) -> dict[str, Any]:
    px = spec.pixel_size_um or 1.0
    axes: list[dict[str, str]] = [
        {"name": "t", "type": "time", **({"unit": "second"} if spec.t_interval_s else {})},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", **({"unit": "micrometer"} if spec.z_step_um else {})},
        {"name": "y", "type": "space", **({"unit": "micrometer"} if spec.pixel_size_um else {})},
        {"name": "x", "type": "space", **({"unit": "micrometer"} if spec.pixel_size_um else {})},
    ]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {
                    "type": "scale",
                    "scale": [spec.t_interval_s or 1.0, 1.0, spec.z_step_um or 1.0, px * 2**level, px * 2**level],
                }
            ],
        }
        for level in range(spec.levels)
    ]
    return {"version": "0.5", "multiscales": [{"name": spec.name, "axes": axes, "datasets": datasets}]}


def _chunk_key(t: int, c: int, z: int, level: int = 0) -> str:
    return f"{level}/c/{t}/{c}/{z}/0/0"


@dataclass(frozen=True)
class PlaneWriter:
    """Writes a plane's chunks, every level, into an image whose arrays exist (`OmeZarrImage.planes`).

    Plain data, so that it pickles: a worker process writes the planes of an image its parent created and grows.
    `path` is the image's local folder or its ``s3://`` URI, with the s3fs options read in the parent.
    """

    path: str
    levels: int
    storage_options: dict[str, Any] | None = None

    def write(self, t: int, c: int, z: int, plane: np.ndarray, *, binned: np.ndarray | None = None) -> None:
        fs = None
        if self.storage_options is not None:
            import fsspec

            fs = fsspec.filesystem("s3", **self.storage_options)  # fsspec caches the instance
        level_plane = plane
        for level in range(self.levels):
            if level:
                level_plane = binned if level == 1 and binned is not None else downsample2(level_plane)
            data, key = _encode(level_plane), _chunk_key(t, c, z, level)
            if fs is not None:
                fs.pipe_file(f"{self.path.removeprefix('s3://')}/{key}", data)
            else:
                target = Path(self.path) / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


class OmeZarrImage:
    """A growable OME-Zarr image written plane by plane; `create` then `write_plane`, or `open` to read.

    `path` is the image's local folder, or its ``s3://`` URI.
    """

    def __init__(self, path: str | Path, group: zarr.Group) -> None:
        self.path: str | Path = path
        self._group = group
        self._arrays: list[Any] = [group[str(level)] for level in range(self.levels)]
        self._t_written = -1
        self._resize_lock = threading.Lock()  # planes may be written from several threads
        # a remote image puts each plane as one object; a local one writes files (the fast path)
        self._planes = PlaneWriter(str(path), levels=len(self._arrays), storage_options=fsspec_options(str(path)))

    @staticmethod
    def _location(path: str | Path) -> tuple[str | Path, dict[str, Any] | None]:
        text = str(path)
        if is_remote(text):
            return text.rstrip("/"), fsspec_options(text)
        return Path(text.removeprefix("file://")), None

    @classmethod
    def create(cls, path: str | Path, spec: ImageSpec) -> OmeZarrImage:
        where, options = cls._location(path)
        if isinstance(where, Path) and where.exists():
            raise LakeError(f"image already exists: {where}")
        attrs: dict[str, Any] = {"ome": _multiscales(spec)}
        if spec.channel_names:
            attrs["ome"]["omero"] = {"channels": [{"label": name, "active": True} for name in spec.channel_names]}
        try:
            group = zarr.open_group(str(where), mode="w-", zarr_format=3, attributes=attrs, storage_options=options)
        except (ContainsGroupError, ContainsArrayError):  # a remote image that exists
            raise LakeError(f"image already exists: {where}") from None
        for level in range(spec.levels):
            shape = _level_shape(spec, level)
            group.create_array(
                str(level),
                shape=shape,
                dtype=spec.dtype,
                chunks=(1, 1, 1, shape[3], shape[4]),
                compressors=[_COMPRESSOR],
                fill_value=0,
                dimension_names=AXES,
            )
        return cls(where, group)

    @classmethod
    def open(cls, path: str | Path) -> OmeZarrImage:
        where, options = cls._location(path)
        try:
            group = zarr.open_group(str(where), mode="r+", storage_options=options)
        except (FileNotFoundError, ValueError) as exc:
            raise LakeError(f"not an OME-Zarr image: {where}") from exc
        return cls(where, group)

    @property
    def levels(self) -> int:
        ome: Any = self._group.attrs["ome"]
        return len(ome["multiscales"][0]["datasets"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._arrays[0].shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self._arrays[0].dtype)
        return dtype

    def write_plane(self, t: int, c: int, z: int, plane: np.ndarray, *, binned: np.ndarray | None = None) -> None:
        """Write one plane at every level; grows the time axis (doubling) when `t` is past its end.

        `binned` is `downsample2(plane)` when the caller has it already (the QC needs it too).
        """
        self.reserve(t, plane.shape)
        self.planes.write(t, c, z, plane, binned=binned)
        self.written(t)

    def reserve(self, t: int, plane_shape: tuple[int, ...]) -> None:
        """Make room for time point `t` (doubling the time axis), before its planes are written elsewhere."""
        if tuple(plane_shape) != self.shape[3:]:
            raise InvalidInputError(f"plane shape {tuple(plane_shape)} does not match image {self.shape[3:]}")
        if t >= self.shape[0]:
            with self._resize_lock:
                if t >= self.shape[0]:
                    self._resize_t(max(t + 1, 2 * self.shape[0]))

    def written(self, t: int) -> None:
        """Record that time point `t` holds a plane, so that `close()` keeps it."""
        with self._resize_lock:
            self._t_written = max(self._t_written, t)

    @property
    def planes(self) -> PlaneWriter:
        """What writes this image's chunks; it pickles, so a worker process can write planes too."""
        return self._planes

    def read_plane(self, t: int, c: int, z: int, *, level: int = 0) -> np.ndarray:
        out: np.ndarray = np.asarray(self._arrays[level][t, c, z])
        return out

    def _resize_t(self, n: int) -> None:
        for arr in self._arrays:
            arr.resize((n, *arr.shape[1:]))

    def close(self) -> None:
        """Trim the time axis to the last written time point."""
        if self._t_written >= 0 and self.shape[0] != self._t_written + 1:
            self._resize_t(self._t_written + 1)


def chunk_exists(image_path: str | Path, t: int, c: int, z: int) -> bool:
    """Whether the level-0 chunk holding plane (t, c, z) is stored."""
    if is_remote(str(image_path)):
        fs, key = filesystem(str(image_path))
        chunk = f"{key}/{_chunk_key(t, c, z)}"
        fs.invalidate_cache(chunk)  # a listing cached before the plane was put must not hide it
        return bool(fs.exists(chunk))
    return (Path(image_path) / _chunk_key(t, c, z)).exists()


def list_images(folder: str | Path) -> list[str]:
    """Names of the entries directly under an image folder (e.g. the runs under ``<lake>/images``)."""
    fs, path = filesystem(str(folder))
    fs.invalidate_cache(path)
    try:
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def delete_images(folder: str | Path) -> None:
    """Remove an image folder (a run's images) and everything in it; a missing one is no error."""
    fs, path = filesystem(str(folder))
    fs.invalidate_cache(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
