"""Readers of existing microscopy images: OME-TIFF (Micro-Manager MMStack included), OME-Zarr, plain PNG/TIFF.

Every reader turns its format's metadata into one description (positions of t x c x z planes, with stage
positions, times and exposures) and reads one plane at a time, so an import never holds a whole stack in memory.
Readers check everything they can before the first plane is read (shapes, missing or truncated pages), so bad
input fails before the lake is touched. Library errors become one-line :class:`lake.InvalidInputError`s.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic
import zarr
from PIL import Image as PILImage

import lake

if TYPE_CHECKING:  # tifffile is imported on first use: a PNG or OME-Zarr import never needs it
    import ome_types.model as ome
    import tifffile

__all__ = [
    "ImageReader",
    "Plane",
    "Position",
    "is_ome_zarr",
    "open_image",
    "read_label_image",
    "source_stem",
    "well_from_name",
]

_TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_SUFFIXES = (".png",)
_MM_TAG = 51123  # MicroManagerMetadata: one JSON object per plane
# tifffile axis letters -> our dimensions; I/Q (a plain image sequence) is read as time.
_AXIS_DIMS = {"T": "t", "C": "c", "Z": "z", "R": "p", "I": "t", "Q": "t"}
_TO_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micrometer": 1.0, "nm": 1e-3, "nanometer": 1e-3,
          "millimeter": 1e3, "Å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "reference frame": 1.0}  # fmt: skip
_TO_S = {"s": 1.0, "second": 1.0, "ms": 1e-3, "millisecond": 1e-3, "µs": 1e-6, "microsecond": 1e-6, "ns": 1e-9,
         "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}  # fmt: skip
# <plate>_<well>_<field>, as in HPA file names (1000_A12_2_green.png); Micro-Manager HCS positions (A1-Site_0).
_WELL_IN_NAME = re.compile(r"(?:^|_)[^_]+_([A-Pa-p])(0?[1-9]|1\d|2[0-4])_\d+(?:_|$)")
_MM_WELL = re.compile(r"^([A-Pa-p])(0?[1-9]|1\d|2[0-4])-Site_\d+$")


@dataclass(frozen=True)
class Plane:
    """One (t, c, z) plane of a position, with what the source says about its acquisition."""

    t: int
    c: int
    z: int
    acquired_at: datetime | None = None
    exposure_ms: float | None = None
    x_um: float | None = None
    y_um: float | None = None
    z_um: float | None = None


@dataclass(frozen=True)
class Position:
    """One stage position: an image of ``spec``'s shape; ``planes`` lists every (t, c, z) in storage order."""

    spec: lake.ImageSpec
    channels: tuple[str | None, ...]  # per channel; None where the source names none
    planes: tuple[Plane, ...]
    well: str | None = None
    bit_depth: int | None = None  # the camera's, when below the dtype's: saturation is judged against it


class ImageReader(ABC):
    """An open image source: its positions, the files it reads (what the content hash covers), plane access."""

    format: str

    def __init__(self, path: Path, root: Path, files: Sequence[Path], positions: Sequence[Position]) -> None:
        if not positions:
            raise lake.InvalidInputError(f"{path.name}: holds no image")
        self.path = path
        self.root = root  # files are hashed by their path relative to this folder
        self.files = tuple(sorted(set(files)))
        self.positions = tuple(positions)

    @abstractmethod
    def read_plane(self, p: int, t: int, c: int, z: int) -> np.ndarray:
        """Plane (t, c, z) of position p as a (y, x) array in the position's dtype."""

    def close(self) -> None:
        """Release open files (readers that hold none have nothing to do)."""
        self.closed = True

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# -- small helpers -------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """A library error as one line: pydantic's first error, else the message's first line."""
    if isinstance(exc, pydantic.ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _bad(path: Path, what: str, exc: BaseException | None = None) -> lake.InvalidInputError:
    return lake.InvalidInputError(f"{path.name}: {what}" + (f" ({_one_line(exc)})" if exc is not None else ""))


def _scaled(value: float | None, unit: object, table: Mapping[str, float], default: float = 1.0) -> float | None:
    """A value in a named unit (an enum with ``.value`` or a string) converted by ``table``; None stays None."""
    if value is None:
        return None
    name = str(getattr(unit, "value", unit)) if unit is not None else None
    factor = table.get(name, default) if name is not None else default
    return float(value) * factor


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _utc(when: datetime | None) -> datetime | None:
    """Naive times in metadata are taken as UTC: no format here records the zone otherwise."""
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype in native byte order (OME samples are big-endian); zarr stores it by name."""
    return dtype.newbyteorder("=")


def well_from_name(name: str) -> str | None:
    """The well of an HPA-style ``<plate>_<well>_<field>`` name ("1000_A12_2_green" -> "A12"), else None."""
    m = _WELL_IN_NAME.search(name)
    return f"{m.group(1).upper()}{int(m.group(2))}" if m else None


def source_stem(path: Path) -> str:
    """The file or folder name without its image suffix ("a.ome.tif" -> "a")."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr", ".tiff", ".tif", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _interval_from_times(planes: Sequence[Plane]) -> float | None:
    """The median time step between time points of the first channel and slice, when the planes carry times."""
    times = sorted((p.t, p.acquired_at) for p in planes if p.c == 0 and p.z == 0 and p.acquired_at is not None)
    steps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(times) if b[0] == a[0] + 1]
    return statistics.median(steps) if steps else None


def _storage_order(order: str, sizes: Mapping[str, int]) -> Iterator[tuple[int, int, int]]:
    """(t, c, z) in storage order; ``order`` names the dimensions fastest first, like OME's ``XYZCT`` (missing
    ones count as slowest)."""
    named = [d for d in order.lower() if d in "tcz"]
    dims = [*named, *(d for d in "tcz" if d not in named)][::-1]  # slowest first
    for idx in itertools.product(*(range(sizes[d]) for d in dims)):
        at = dict(zip(dims, idx, strict=True))
        yield at["t"], at["c"], at["z"]


# -- TIFF series: where a plane is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _SeriesLayout:
    """Where plane (p, t, c, z) of a tifffile series lies: a page index and, for RGB-like data, a sample."""

    index_dims: tuple[str | None, ...]  # per non-page axis (slowest first): our dimension, None for size-1 extras
    index_shape: tuple[int, ...]
    page_axes: str  # the page's own axes in storage order, from "YXS"
    page_shape: tuple[int, ...]
    sizes: dict[str, int] = field(default_factory=dict)  # p, t, c, z, y, x
    samples_are_channels: bool = False

    @property
    def order(self) -> str:
        """The page order as OME names it, fastest first (``XYZCT``: z changes fastest)."""
        return "XY" + "".join(d.upper() for d in reversed(self.index_dims) if d in ("t", "c", "z"))

    def page_index(self, p: int, t: int, c: int, z: int) -> int:
        at = {"p": p, "t": t, "c": 0 if self.samples_are_channels else c, "z": z}
        idx = tuple(at[d] if d is not None else 0 for d in self.index_dims)
        return int(np.ravel_multi_index(idx, self.index_shape)) if idx else 0

    def plane_from_page(self, page: np.ndarray, c: int) -> np.ndarray:
        arr = page.reshape(self.page_shape)
        if "S" in self.page_axes:
            arr = np.take(arr, c if self.samples_are_channels else 0, axis=self.page_axes.index("S"))
        out: np.ndarray = arr if self.page_axes.replace("S", "") == "YX" else arr.T
        return out


def _series_layout(series: tifffile.TiffPageSeries, what: Path) -> _SeriesLayout:
    axes, shape = series.get_axes(False), series.get_shape(False)
    sizes = {"p": 1, "t": 1, "c": 1, "z": 1}
    index_dims: list[str | None] = []
    index_shape: list[int] = []
    page_axes, page_shape = "", []
    for ax, n in zip(axes, shape, strict=True):
        if ax in "YXS":
            page_axes += ax
            page_shape.append(n)
            continue
        dim = _AXIS_DIMS.get(ax)
        if dim is None or (sizes[dim] > 1 and n > 1):
            if n > 1:
                raise _bad(what, f"unsupported image axes {axes!r} (axis {ax!r} has {n} entries)")
            dim = None
        elif n > 1 or sizes[dim] == 1:
            sizes[dim] = n
        else:
            dim = None  # a second size-1 axis for a dimension already seen
        index_dims.append(dim)
        index_shape.append(n)
    samples = dict(zip(page_axes, page_shape, strict=True)).get("S", 1)
    if samples > 1 and sizes["c"] > 1:
        raise _bad(what, f"has both {sizes['c']} channels and {samples} samples per pixel; not supported")
    if samples > 1:
        sizes["c"] = samples
    yx = dict(zip(page_axes, page_shape, strict=True))
    return _SeriesLayout(
        index_dims=tuple(index_dims),
        index_shape=tuple(index_shape),
        page_axes=page_axes,
        page_shape=tuple(page_shape),
        sizes={**sizes, "y": yx["Y"], "x": yx["X"]},
        samples_are_channels=samples > 1,
    )


def _check_pages(series: tifffile.TiffPageSeries, layout: _SeriesLayout, what: Path) -> None:
    """Every plane's page must exist and its data must lie inside its file: a truncated file fails here."""
    expected = int(np.prod(layout.index_shape)) if layout.index_shape else 1
    if len(series.pages) != expected:
        raise _bad(what, f"has {len(series.pages)} image pages where its metadata describes {expected}")
    for i, page in enumerate(series.pages):
        if page is None:
            raise _bad(what, f"plane {i} is missing (truncated file, or a file of a multi-file set is absent)")
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
        if not ends or not any(page.databytecounts) or max(ends) > page.parent.filehandle.size:
            raise _bad(what, f"plane {i} lies past the end of {page.parent.filehandle.name} (truncated file?)")


class _TiffReader(ImageReader):
    """Planes of tifffile series, one page at a time."""

    def __init__(
        self,
        path: Path,
        root: Path,
        tifs: Sequence[tifffile.TiffFile],
        series: Sequence[tuple[tifffile.TiffPageSeries, _SeriesLayout]],
        positions: Sequence[Position],
        fmt: str,
    ) -> None:
        self._tifs = list(tifs)
        # Each position is (series, layout, position index within the series: MMStack keeps positions on one axis).
        self._where: list[tuple[tifffile.TiffPageSeries, _SeriesLayout, int]] = []
        for s, layout in series:
            self._where.extend((s, layout, r) for r in range(layout.sizes["p"]))
        files = {Path(p.parent.filehandle.path) for s, _ in series for p in s.pages if p is not None}
        self.format = fmt
        super().__init__(path, root, sorted(files), positions)
        # Pages of other files of a multi-file set come with closed handles; keep them open while reading.
        self._reopened: list[Any] = []
        for s, _ in series:
            for page in s.pages:
                fh = page.parent.filehandle if page is not None else None
                if fh is not None and fh.closed:
                    fh.open()
                    self._reopened.append(fh)

    def read_plane(self, p: int, t: int, c: int, z: int) -> np.ndarray:
        series, layout, r = self._where[p]
        page = series.pages[layout.page_index(r, t, c, z)]
        assert page is not None  # checked when opened
        try:
            data = page.asarray()
        except (ValueError, OSError, RuntimeError) as e:
            raise _bad(Path(page.parent.filehandle.path), f"cannot read plane t={t} c={c} z={z}", e) from None
        dtype = _native(np.dtype(series.dtype))
        return layout.plane_from_page(np.asarray(data), c).astype(dtype, copy=False)

    def close(self) -> None:
        for fh in self._reopened:
            fh.close()
        for tif in self._tifs:
            tif.close()


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError as e:  # a declared dependency; say so rather than fail with a traceback
        raise lake.LakeError("reading TIFF files needs the tifffile package, which is not installed") from e
    return tifffile


def _open_tiff(path: Path, what: Path) -> tifffile.TiffFile:
    tf = _tifffile()
    try:
        tif: tifffile.TiffFile = tf.TiffFile(path)
    except (tf.TiffFileError, ValueError, OSError, struct.error) as e:
        raise _bad(what, "is not a readable TIFF file", e) from None
    return tif


# -- OME-TIFF ---------------------------------------------------------------------------------------------------


def _ome_from_xml(xml: str, what: Path) -> ome.OME:
    import ome_types

    try:
        return ome_types.from_xml(xml)
    except (ValueError, TypeError) as e:  # pydantic and XML parse errors are ValueErrors
        raise _bad(what, "has unreadable OME-XML metadata", e) from None


def _ome_well(doc: ome.OME, image_id: str) -> str | None:
    """The well of an OME image from the document's plates (row letter + 1-based column)."""
    for plate in doc.plates:
        for well in plate.wells:
            for sample in well.well_samples:
                if sample.image_ref is not None and sample.image_ref.id == image_id:
                    row, col = int(well.row), int(well.column)
                    letters = str(getattr(plate.row_naming_convention, "value", "letter")) == "letter"
                    return f"{chr(ord('A') + row) if letters else row + 1}{col + 1}"
    return None


def _ome_planes(image: ome.Image, own_xml: ome.Image | None) -> list[Plane]:
    """Every (t, c, z) of an OME image in storage order, with the matching OME Plane's times and positions.

    A multi-file set may keep an image's Plane elements only in the XML of the file holding its data (ome-writers
    writes each position's planes into that position's file), hence ``own_xml``."""
    px = image.pixels
    meta = px.planes or (own_xml.pixels.planes if own_xml is not None else [])
    by_index = {(pl.the_t, pl.the_c, pl.the_z): pl for pl in meta}
    start = _utc(image.acquisition_date)
    single = px.size_t * px.size_c * px.size_z == 1  # the acquisition date is then the plane's own time
    planes = []
    for t, c, z in _storage_order(px.dimension_order.value, {"t": px.size_t, "c": px.size_c, "z": px.size_z}):
        pl = by_index.get((t, c, z))
        if pl is None:
            planes.append(Plane(t, c, z, acquired_at=start if single else None))
            continue
        delta = _scaled(pl.delta_t, pl.delta_t_unit, _TO_S)
        when = start + timedelta(seconds=delta) if start and delta is not None else (start if single else None)
        planes.append(
            Plane(
                t, c, z, acquired_at=when,
                exposure_ms=_ms(_scaled(pl.exposure_time, pl.exposure_time_unit, _TO_S)),
                x_um=_scaled(pl.position_x, pl.position_x_unit, _TO_UM),
                y_um=_scaled(pl.position_y, pl.position_y_unit, _TO_UM),
                z_um=_scaled(pl.position_z, pl.position_z_unit, _TO_UM),
            )
        )  # fmt: skip
    return planes


def _ome_position(
    doc: ome.OME,
    image: ome.Image,
    series: tifffile.TiffPageSeries,
    layout: _SeriesLayout,
    what: Path,
    own_xml: ome.Image | None,
) -> Position:
    """A position from an OME Image (sizes, physical sizes, channels, wells) and its tifffile series (data)."""
    px = image.pixels
    sizes = {"t": px.size_t, "c": px.size_c, "z": px.size_z, "y": px.size_y, "x": px.size_x}
    got = {d: layout.sizes[d] for d in sizes}
    if got != sizes:
        raise _bad(what, f"OME sizes {sizes} do not match the image data {got}")
    planes = _ome_planes(image, own_xml)
    names = tuple(ch.name for ch in px.channels) if len(px.channels) == px.size_c else (None,) * px.size_c
    spec = lake.ImageSpec(
        t=px.size_t, c=px.size_c, z=px.size_z, y=px.size_y, x=px.size_x,
        dtype=_native(np.dtype(series.dtype)).name,
        pixel_size_um=_scaled(px.physical_size_x, px.physical_size_x_unit, _TO_UM),
        z_step_um=_scaled(px.physical_size_z, px.physical_size_z_unit, _TO_UM),
        t_interval_s=_scaled(px.time_increment, px.time_increment_unit, _TO_S) or _interval_from_times(planes),
        channel_names=tuple(str(c) for c in names) if all(names) else (),
    )  # fmt: skip
    well = _ome_well(doc, image.id) or well_from_name(source_stem(what))
    return Position(spec, names, tuple(planes), well=well, bit_depth=px.significant_bits)


def _match_images(
    doc: ome.OME, series: Sequence[tifffile.TiffPageSeries], what: Path
) -> list[tuple[ome.Image, tifffile.TiffPageSeries]]:
    """Pair tifffile's OME series with the OME images. tifffile keeps the images' order but drops images that
    have no data, so each series is the next image with its name and sizes."""
    pairs = []
    images = iter(doc.images)
    for s in series:
        yx = {ax: n for ax, n in zip(s.get_axes(False), s.get_shape(False), strict=True) if ax in "YX"}
        for image in images:
            px = image.pixels
            if (s.name or None) == (image.name or None) and (yx["Y"], yx["X"]) == (px.size_y, px.size_x):
                pairs.append((image, s))
                break
        else:
            raise _bad(what, f"OME-XML has no image matching series {s.name!r}")
    return pairs


def _own_image_xml(page_path: Path, image_id: str, cache: dict[Path, ome.OME | None]) -> ome.Image | None:
    """The image as described in the OME-XML of the file holding its data."""
    if page_path not in cache:
        tif = _open_tiff(page_path, page_path)
        with tif:
            xml = tif.ome_metadata
        cache[page_path] = _ome_from_xml(xml, page_path) if xml else None
    doc = cache[page_path]
    return next((im for im in doc.images if im.id == image_id), None) if doc is not None else None


def _ome_tiff_positions(tif: tifffile.TiffFile, what: Path, skip: set[Path]) -> tuple[list[Position], list[Any]]:
    """Positions of one OME-TIFF file (and of the files of its multi-file set) not already in ``skip``."""
    xml = tif.ome_metadata
    if not xml:
        raise _bad(what, "has no OME-XML metadata (truncated or not an OME-TIFF)")
    doc = _ome_from_xml(xml, what)
    positions, series = [], []
    own: dict[Path, ome.OME | None] = {Path(tif.filehandle.path): doc}
    for image, s in _match_images(doc, tif.series, what):
        files = {Path(p.parent.filehandle.path) for p in s.pages if p is not None}
        if files & skip:
            continue  # read already, through another file of the same multi-file set
        layout = _series_layout(s, what)
        _check_pages(s, layout, what)
        first = next(p for p in s.pages if p is not None)
        own_image = _own_image_xml(Path(first.parent.filehandle.path), image.id, own)
        positions.append(_ome_position(doc, image, s, layout, what, own_image))
        series.append((s, layout))
    return positions, series


# -- Micro-Manager MMStack ---------------------------------------------------------------------------------------


def _mm_time(text: object) -> datetime | None:
    """Micro-Manager's "2024-03-24 15:08:45.561 +0100" (or ISO) as UTC."""
    if not isinstance(text, str) or not text:
        return None
    cleaned = re.sub(r"\s+([+-]\d{2}:?\d{2})$", r"\1", text.strip())
    try:
        return _utc(datetime.fromisoformat(cleaned))
    except ValueError:
        return None


def _mm_plane_tags(series: tifffile.TiffPageSeries, index: int) -> dict[str, Any]:
    """The MicroManagerMetadata JSON of one plane; MMStack planes are TiffFrames, so the IFD is read at its offset."""
    tf = _tifffile()
    page = series.pages[index]
    if page is None:
        return {}
    if not isinstance(page, tf.TiffPage):
        fh = page.parent.filehandle
        reopen = fh.closed  # a plane in another file of a multi-file stack
        if reopen:
            fh.open()
        try:
            with fh.lock:
                fh.seek(page.offset)
                page = tf.TiffPage(page.parent, index=page.index)
        finally:
            if reopen:
                fh.close()
    value = page.tags.valueof(_MM_TAG)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _num(meta: Mapping[str, Any], key: str) -> float | None:
    try:
        return float(meta[key])
    except (KeyError, TypeError, ValueError):
        return None


def _mm_planes(
    s: tifffile.TiffPageSeries, layout: _SeriesLayout, r: int, summary: Mapping[str, Any]
) -> tuple[list[Plane], set[str]]:
    """The planes of position ``r`` with their stage positions and times, and the wells their names give."""
    start = _mm_time(summary.get("StartTime"))
    planes, wells = [], set()
    for t, c, z in _storage_order(layout.order, layout.sizes):
        tags = _mm_plane_tags(s, layout.page_index(r, t, c, z))
        elapsed = _num(tags, "ElapsedTime-ms")
        when = _mm_time(tags.get("ReceivedTime")) or (
            start + timedelta(milliseconds=elapsed) if start and elapsed is not None else None
        )
        if m := _MM_WELL.match(str(tags.get("PositionName", ""))):
            wells.add(f"{m.group(1).upper()}{int(m.group(2))}")
        planes.append(
            Plane(
                t, c, z, acquired_at=when, exposure_ms=_num(tags, "Exposure-ms"),
                x_um=_num(tags, "XPositionUm"), y_um=_num(tags, "YPositionUm"), z_um=_num(tags, "ZPositionUm"),
            )
        )  # fmt: skip
    return planes, wells


def _mm_positions(tif: tifffile.TiffFile, what: Path) -> tuple[list[Position], list[Any]]:
    """Positions of a Micro-Manager MMStack: one tifffile series with the positions on its R axis."""
    summary: dict[str, Any] = (tif.micromanager_metadata or {}).get("Summary") or {}
    s = tif.series[0]
    layout = _series_layout(s, what)
    _check_pages(s, layout, what)
    sizes = layout.sizes
    names = summary.get("ChNames") or []
    channels = tuple(str(n) for n in names) if len(names) == sizes["c"] else (None,) * sizes["c"]
    interval_ms = _num(summary, "Interval_ms")
    depth = _num(summary, "BitDepth")
    positions = []
    for r in range(sizes["p"]):
        planes, wells = _mm_planes(s, layout, r, summary)
        spec = lake.ImageSpec(
            t=sizes["t"], c=sizes["c"], z=sizes["z"], y=sizes["y"], x=sizes["x"],
            dtype=_native(np.dtype(s.dtype)).name,
            pixel_size_um=_num(summary, "PixelSize_um") or None,  # MM writes 0 when uncalibrated
            z_step_um=_num(summary, "z-step_um") or None,
            t_interval_s=(interval_ms / 1e3 if interval_ms else None) or _interval_from_times(planes),
            channel_names=tuple(str(c) for c in channels) if all(channels) else (),
        )  # fmt: skip
        well = wells.pop() if len(wells) == 1 else well_from_name(source_stem(what))
        positions.append(Position(spec, channels, tuple(planes), well=well, bit_depth=int(depth) if depth else None))
    return positions, [(s, layout)]


# -- generic TIFF -------------------------------------------------------------------------------------------------


def _plain_tiff_positions(tif: tifffile.TiffFile, what: Path) -> tuple[list[Position], list[Any]]:
    """A TIFF without OME or Micro-Manager metadata: each series is a position, axes as tifffile reads them."""
    positions, series = [], []
    for s in tif.series:
        layout = _series_layout(s, what)
        if layout.sizes["p"] > 1:
            raise _bad(what, "positions on an axis are only read from OME-TIFF or Micro-Manager files")
        _check_pages(s, layout, what)
        sz = layout.sizes
        spec = lake.ImageSpec(
            t=sz["t"], c=sz["c"], z=sz["z"], y=sz["y"], x=sz["x"], dtype=_native(np.dtype(s.dtype)).name
        )
        planes = tuple(Plane(t, c, z) for t, c, z in _storage_order(layout.order, sz))
        positions.append(Position(spec, (None,) * sz["c"], planes, well=well_from_name(source_stem(what))))
        series.append((s, layout))
    return positions, series


def _open_tiffs(path: Path, files: Sequence[Path], *, require_ome: bool) -> ImageReader:
    """OME-TIFF files (one, or a folder of a multi-file set or of one file per position), MMStack, plain TIFF."""
    tifs: list[tifffile.TiffFile] = []
    positions: list[Position] = []
    series: list[Any] = []
    covered: set[Path] = set()
    fmt = "tiff"
    try:
        for f in files:
            if f in covered:
                continue  # read already as part of another file's multi-file series
            tif = _open_tiff(f, f)
            tifs.append(tif)
            try:
                if tif.is_mmstack:
                    fmt, (pos, ser) = "mmstack", _mm_positions(tif, f)
                elif tif.is_ome:
                    fmt, (pos, ser) = "ome-tiff", _ome_tiff_positions(tif, f, covered)
                elif require_ome:
                    raise _bad(f, "has no readable OME-XML metadata (truncated, or not an OME-TIFF)")
                else:
                    pos, ser = _plain_tiff_positions(tif, f)
            except (ValueError, OSError, KeyError, IndexError) as e:
                if isinstance(e, lake.InvalidInputError):
                    raise
                raise _bad(f, "has unreadable TIFF structure", e) from None
            positions += pos
            series += ser
            covered |= {Path(p.parent.filehandle.path) for s, _ in ser for p in s.pages if p is not None}
        return _TiffReader(path, path if path.is_dir() else path.parent, tifs, series, positions, fmt)
    except BaseException:
        for tif in tifs:
            tif.close()
        raise


# -- OME-Zarr -----------------------------------------------------------------------------------------------------


def is_ome_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in ("zarr.json", ".zgroup", ".zattrs"))


@dataclass(frozen=True)
class _ZarrImage:
    array: Any  # zarr.Array of level 0
    dims: tuple[str | None, ...]  # per array axis: t, c, z, y, x (None: a size-1 axis of another kind)
    position: Position


def _zarr_axis_dim(name: str, kind: str | None) -> str | None:
    if kind == "time" or name == "t":
        return "t"
    if kind == "channel" or name == "c":
        return "c"
    return name if name in ("z", "y", "x") else None


def _zarr_channels(attrs: Any, n: int) -> tuple[str | None, ...]:
    omero = getattr(attrs, "omero", None)
    if omero is None and isinstance(attrs, pydantic.BaseModel):
        omero = (attrs.model_extra or {}).get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else getattr(omero, "channels", None)
    labels: list[str | None] = []
    for ch in channels or []:
        label = ch.get("label") if isinstance(ch, dict) else getattr(ch, "label", None)
        labels.append(str(label) if label else None)
    return tuple(labels) if len(labels) == n else (None,) * n


@dataclass(frozen=True)
class _ZarrAxes:
    dims: tuple[str | None, ...]
    sizes: dict[str, int]
    scales: dict[str, float | None]  # per dimension, in micrometers or seconds; None without a known unit


def _zarr_axes(ms: Any, shape: Sequence[int], what: Path) -> _ZarrAxes:
    """Our dimension of every axis of the level-0 array, with sizes and the level-0 scale in um or s."""
    level0 = ms.datasets[0]
    scale = next((list(t.scale) for t in level0.coordinateTransformations if t.type == "scale"), None)
    dims: list[str | None] = []
    sizes = {"t": 1, "c": 1, "z": 1, "y": 1, "x": 1}
    scales: dict[str, float | None] = {}
    for i, (axis, n) in enumerate(zip(ms.axes, shape, strict=True)):
        dim = _zarr_axis_dim(axis.name, axis.type)
        if dim is None and n > 1:
            raise _bad(what, f"axis {axis.name!r} ({n} entries) is not one of t, c, z, y, x")
        dims.append(dim)
        if dim is not None:
            sizes[dim] = int(n)
            table = _TO_S if dim == "t" else _TO_UM
            # Without a unit the scale is only a ratio, not a physical size.
            scales[dim] = _scaled(float(scale[i]), axis.unit, table) if scale and axis.unit else None
    if "y" not in dims or "x" not in dims or dims.index("y") > dims.index("x"):
        raise _bad(what, "needs y and x axes, y first")
    return _ZarrAxes(tuple(dims), sizes, scales)


def _zarr_image(group: zarr.Group, version: str, well: str | None, what: Path) -> _ZarrImage:
    from ome_zarr_models import v04, v05

    model_cls: Any = v05.Image if version == "0.5" else v04.Image
    try:
        model = model_cls.from_zarr(group)
    except (ValueError, KeyError, TypeError) as e:
        raise _bad(what, f"is not a valid OME-Zarr {version} image", e) from None
    attrs = model.attributes.ome if version == "0.5" else model.attributes
    ms = attrs.multiscales[0]
    array = group.get(ms.datasets[0].path)
    if not isinstance(array, zarr.Array):
        raise _bad(what, f"has no array at {ms.datasets[0].path!r}")
    axes = _zarr_axes(ms, array.shape, what)
    sizes = axes.sizes
    channels = _zarr_channels(attrs, sizes["c"])
    spec = lake.ImageSpec(
        t=sizes["t"], c=sizes["c"], z=sizes["z"], y=sizes["y"], x=sizes["x"],
        dtype=_native(np.dtype(array.dtype)).name,
        pixel_size_um=axes.scales.get("x"), z_step_um=axes.scales.get("z"), t_interval_s=axes.scales.get("t"),
        channel_names=tuple(str(c) for c in channels) if all(channels) else (),
    )  # fmt: skip
    planes = tuple(Plane(t, c, z) for t, c, z in _storage_order("XYZCT", sizes))
    return _ZarrImage(array, axes.dims, Position(spec, channels, planes, well=well))


class _ZarrReader(ImageReader):
    format = "ome-zarr"

    def __init__(self, path: Path, images: Sequence[_ZarrImage]) -> None:
        self._images = list(images)
        files = [f for f in path.rglob("*") if f.is_file()]
        super().__init__(path, path, files, [im.position for im in images])

    def read_plane(self, p: int, t: int, c: int, z: int) -> np.ndarray:
        image = self._images[p]
        at = {"t": t, "c": c, "z": z}
        key = tuple(slice(None) if d in ("y", "x") else at.get(d or "", 0) for d in image.dims)
        try:
            plane = np.asarray(image.array[key])
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            raise _bad(self.path, f"cannot read plane p={p} t={t} c={c} z={z}", e) from None
        return plane.astype(_native(plane.dtype), copy=False)


def _plate_images(group: zarr.Group, version: str, path: Path) -> list[_ZarrImage]:
    """The fields of an HCS plate, well by well; the well's name from its path ("B/3" -> "B3")."""
    from ome_zarr_models import v04, v05

    hcs_cls: Any = v05.HCS if version == "0.5" else v04.HCS
    well_cls: Any = v05.Well if version == "0.5" else v04.Well
    try:
        plate = hcs_cls.from_zarr(group)
    except (ValueError, KeyError, TypeError) as e:
        raise _bad(path, f"is not a valid OME-Zarr {version} plate", e) from None
    plate_attrs = plate.attributes.ome.plate if version == "0.5" else plate.attributes.plate
    images = []
    for well in plate_attrs.wells:
        well_group = group.get(well.path)
        if not isinstance(well_group, zarr.Group):
            continue  # a well of the plate layout that was never imaged
        try:
            model = well_cls.from_zarr(well_group)
        except (ValueError, KeyError, TypeError) as e:
            raise _bad(path, f"well {well.path} is not a valid OME-Zarr {version} well", e) from None
        row, col = well.path.split("/")
        name = f"{row.upper()}{int(col) if col.isdigit() else col}"
        for field_ref in (model.attributes.ome.well if version == "0.5" else model.attributes.well).images:
            field_group = well_group.get(field_ref.path)
            if not isinstance(field_group, zarr.Group):
                raise _bad(path, f"field {well.path}/{field_ref.path} is missing")
            images.append(_zarr_image(field_group, version, name, path))
    return images


def _open_zarr(path: Path) -> ImageReader:
    """An OME-Zarr image (v0.4 on zarr v2, v0.5 on zarr v3), or an HCS plate with one position per field."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except (ValueError, OSError, KeyError) as e:  # zarr's own errors are ValueErrors
        raise _bad(path, "is not a zarr group", e) from None
    version = "0.5" if group.metadata.zarr_format == 3 else "0.4"
    attrs = group.attrs.asdict()
    ome_attrs = attrs.get("ome", {}) if version == "0.5" else attrs
    if isinstance(ome_attrs, dict) and "plate" in ome_attrs:
        return _ZarrReader(path, _plate_images(group, version, path))
    return _ZarrReader(path, [_zarr_image(group, version, None, path)])


# -- PNG ----------------------------------------------------------------------------------------------------------


def _pil_array(path: Path) -> np.ndarray:
    try:
        with PILImage.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError, PILImage.DecompressionBombError) as e:
        raise _bad(path, "is not a readable image", e) from None
    return arr.astype(_native(arr.dtype), copy=False)


class _ArrayReader(ImageReader):
    """A whole 2D image (or RGB: one channel per sample) already in memory."""

    format = "png"

    def __init__(self, path: Path, data: np.ndarray) -> None:
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3:
            raise _bad(path, f"is not a 2D image (shape {data.shape})")
        self._data = data
        y, x, c = data.shape
        spec = lake.ImageSpec(t=1, c=c, z=1, y=y, x=x, dtype=data.dtype.name)
        planes = tuple(Plane(0, ch, 0) for ch in range(c))
        super().__init__(
            path, path.parent, [path], [Position(spec, (None,) * c, planes, well_from_name(source_stem(path)))]
        )

    def read_plane(self, p: int, t: int, c: int, z: int) -> np.ndarray:
        out: np.ndarray = self._data[:, :, c]
        return out


# -- entry points -------------------------------------------------------------------------------------------------


def _tiff_files_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(_TIFF_SUFFIXES))


def open_image(path: Path) -> ImageReader:
    """Open an image source by what it is: an OME-Zarr folder, a folder of OME-TIFF files, or one file."""
    if not path.exists():
        raise lake.InvalidInputError(f"no such file or folder: {path}")
    name = path.name.lower()
    if is_ome_zarr(path):
        return _open_zarr(path)
    if path.is_dir():
        files = _tiff_files_in(path)
        if not files:
            raise _bad(path, "is neither an OME-Zarr group nor a folder of OME-TIFF files")
        return _open_tiffs(path, files, require_ome=True)
    if name.endswith(_TIFF_SUFFIXES):
        return _open_tiffs(path, [path], require_ome=name.endswith((".ome.tif", ".ome.tiff")))
    if name.endswith(_PNG_SUFFIXES):
        return _ArrayReader(path, _pil_array(path))
    raise _bad(path, "unsupported image format; expected .ome.tif[f], .tif[f], .png or an OME-Zarr folder")


def read_label_image(path: Path) -> np.ndarray:
    """A 2D label image (PNG or TIFF) as integers; 0 is background."""
    if not path.is_file():
        raise lake.InvalidInputError(f"no such mask file: {path}")
    if path.name.lower().endswith(_TIFF_SUFFIXES):
        with _open_tiffs(path, [path], require_ome=False) as reader:
            if len(reader.positions) != 1 or len(reader.positions[0].planes) != 1:
                raise _bad(path, "a mask must be a single 2D label image")
            labels = reader.read_plane(0, 0, 0, 0)
    else:
        labels = _pil_array(path)
    if labels.ndim != 2:
        raise _bad(path, f"a mask must be a 2D label image, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise _bad(path, f"a mask must hold integer labels, got {labels.dtype}")
    return labels
