"""Importing existing images: OME-TIFF (OME samples, pymmcore-plus MDA output, an MMStack), OME-Zarr 0.4 / 0.5,
the HPA field with its masks; re-import, bad input and a killed import leave the lake consistent."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
import zarr
from PIL import Image

import lake
from acquisition._image_readers import open_image
from acquisition._images_ingest import CRASH_ENV, OBJECT_ID_STRIDE, ImageIngest, ingest_images
from tests.conftest import ROOT, SHARED, need

OME_TIFF = SHARED / "microscopy" / "ome_tiff"
ZARR_EXAMPLES = SHARED / "microscopy" / "ome_zarr_examples" / "data"
HPA_DIR = SHARED / "hpa"
HPA_GREEN = HPA_DIR / "hpa_1000_A12_2_green.png"
HPA_CELLS = HPA_DIR / "hpa_1000_A12_2_cellmask.png"
HPA_NUCLEI = HPA_DIR / "hpa_1000_A12_2_nucleimask.png"
MM_CONFIG = SHARED / "microscopy" / "micromanager" / "MMConfig_demo.cfg"
VALIDATOR = Path(sys.executable).parent / "ome-zarr-models"
TABLES = ("frames", "objects", "acquisition_runs", "datasets")
# (file, T, C, Z) of the OME samples, as the MANIFEST lists them
OME_SAMPLES = [
    ("multi-channel.ome.tif", 1, 3, 1),
    ("multi-channel-z-series.ome.tif", 1, 3, 5),
    ("multi-channel-time-series.ome.tif", 7, 3, 1),
    ("4D-series.ome.tif", 7, 1, 5),
]


def _tifffile() -> Any:
    return pytest.importorskip("tifffile", reason="tifffile is not installed (a dependency of OME-TIFF import)")


def _versions(target: lake.Lake) -> dict[str, int]:
    return {t: target.version(t) for t in TABLES}


def _frames(target: lake.Lake, run_id: str) -> list[dict[str, Any]]:
    rows = lake.query(target, f"SELECT * FROM frames WHERE run_id = '{run_id}' ORDER BY frame_id").to_pylist()
    return list(rows)


def _validate(path: str) -> None:
    proc = subprocess.run([str(VALIDATOR), "validate", path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ome-zarr-models rejects {path}:\n{proc.stdout}\n{proc.stderr}"


def _ome_attrs(image_uri: str) -> dict[str, Any]:
    attrs: dict[str, Any] = zarr.open_group(image_uri, mode="r").attrs.asdict()["ome"]
    return attrs


# -- OME-TIFF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "t", "c", "z"), OME_SAMPLES)
def test_ome_tiff_samples(tmp_lake: lake.Lake, name: str, t: int, c: int, z: int) -> None:
    tifffile = _tifffile()
    import ome_types

    path = need(OME_TIFF / name)
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        source = series.asarray()
        axes = series.axes
        meta = ome_types.from_xml(tf.ome_metadata)
    px = meta.images[0].pixels
    assert (px.size_t, px.size_c, px.size_z) == (t, c, z)
    assert (px.size_y, px.size_x) == (167, 439)  # Y is the short side

    r = ingest_images(tmp_lake, path)
    assert (r.n_frames, r.n_positions, r.n_objects, r.skipped) == (t * c * z, 1, 0, False)
    rows = _frames(tmp_lake, r.run_id)
    assert [row["frame_id"] for row in rows] == list(range(t * c * z))
    assert {(row["t"], row["c"], row["z"]) for row in rows} == {
        (i, j, k) for i in range(t) for j in range(c) for k in range(z)
    }
    assert {tuple(row["shape"]) for row in rows} == {(167, 439)}
    assert {row["dtype"] for row in rows} == {"int8"}
    # The samples carry no physical sizes and no channel names: nothing is invented.
    assert px.physical_size_x is None
    assert all(ch.name is None for ch in px.channels)
    assert {row["channel"] for row in rows} == {None}
    ome = _ome_attrs(r.images[0])
    x_axis = ome["multiscales"][0]["axes"][-1]
    assert "unit" not in x_axis
    assert "omero" not in ome

    _validate(r.images[0])
    image = lake.OmeZarrImage.open(r.images[0])
    assert image.shape == (t, c, z, 167, 439)
    assert str(image.dtype) == "int8"
    index = {"T": t - 1, "C": c - 1, "Z": z - 1}  # the last plane: every axis away from 0
    key = tuple(index[a] for a in axes if a in index)
    np.testing.assert_array_equal(image.read_plane(t - 1, c - 1, z - 1), source[key])
    assert rows[-1]["image_uri"] == r.images[0]


@pytest.fixture(scope="module")
def mda_ome_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pymmcore-plus MDA on the Micro-Manager demo devices: 2 positions x 2 time points x 2 channels."""
    _tifffile()  # ome-writers writes OME-TIFF through tifffile
    import useq
    from pymmcore_plus import CMMCorePlus

    out = tmp_path_factory.mktemp("mda") / "mm.ome.tiff"
    core = CMMCorePlus()
    core.loadSystemConfiguration(str(need(MM_CONFIG)))
    seq = useq.MDASequence(
        stage_positions=[(0, 0, 0), (100, 200, 0)],
        time_plan={"interval": 0.1, "loops": 2},
        channels=["DAPI", "FITC"],
    )
    core.mda.run(seq, output=out)
    # With several positions ome-writers writes a folder (named after the file) with one OME-TIFF per position.
    folder = out.with_name("mm")
    assert sorted(p.name for p in folder.iterdir()) == ["mm_p000.ome.tiff", "mm_p001.ome.tiff"]
    return folder


def test_multi_position_mda_with_positions_and_times(tmp_lake: lake.Lake, mda_ome_tiff: Path) -> None:
    r = ingest_images(tmp_lake, mda_ome_tiff)
    assert (r.n_frames, r.n_positions) == (8, 2)
    assert [Path(u).name for u in r.images] == ["p000.ome.zarr", "p001.ome.zarr"]
    rows = _frames(tmp_lake, r.run_id)
    plan = {0: (0.0, 0.0), 1: (100.0, 200.0)}
    for row in rows:
        assert row["x_um"] == pytest.approx(plan[row["p"]][0], abs=0.1)  # the demo stage lands within 0.01 um
        assert row["y_um"] == pytest.approx(plan[row["p"]][1], abs=0.1)
        assert row["channel"] == ["DAPI", "FITC"][row["c"]]
        assert row["exposure_ms"] == pytest.approx(10.0)
    times = [row["acquired_at"] for row in rows]
    assert None not in times
    assert times == sorted(times)
    for p in (0, 1):
        by_t = sorted((row["t"], row["acquired_at"]) for row in rows if row["p"] == p and row["c"] == 0)
        assert by_t[0][1] < by_t[1][1]
    ome = _ome_attrs(r.images[1])
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1] == 1.0  # 1 um pixels
    assert [ch["label"] for ch in ome["omero"]["channels"]] == ["DAPI", "FITC"]
    _validate(r.images[1])

    # One file of the set reads the whole set (it references the other): the same content, so a no-op.
    again = ingest_images(tmp_lake, mda_ome_tiff / "mm_p001.ome.tiff")
    assert again.skipped
    assert again.run_id == r.run_id
    assert again.n_positions == 2


def _write_mmstack(path: Path, planes: dict[tuple[int, int, int, int], np.ndarray], summary: dict[str, Any],
                   plane_meta: dict[tuple[int, int, int, int], dict[str, Any]]) -> None:  # fmt: skip
    """A Micro-Manager multipage TIFF as MM writes it: header with index map, summary, display settings and
    comments; every IFD 13 entries long with its pixels right after it and its MicroManagerMetadata JSON tag.
    ``planes`` keys are (channel, slice, frame, position), as in MM's index map."""
    h, w = next(iter(planes.values())).shape
    out = bytearray(b"II" + struct.pack("<HI", 42, 0))
    out += struct.pack("<8I", 54773648, 0, 483765892, 0, 99384722, 0, 2355492, 0)
    summ = json.dumps(summary).encode()
    struct.pack_into("<I", out, 36, len(summ))
    out += summ
    index, next_slot = [], 4
    for key, plane in planes.items():
        out += b"\0" * (len(out) % 2)
        ifd = len(out)
        struct.pack_into("<I", out, next_slot, ifd)
        data, meta = ifd + 162, json.dumps(plane_meta[key]).encode() + b"\0"
        tail = data + plane.nbytes
        entries = [
            (256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, data),
            (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, plane.nbytes), (282, 5, 1, tail), (283, 5, 1, tail + 8),
            (296, 3, 1, 3), (51123, 2, len(meta), tail + 16),
        ]  # fmt: skip
        out += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:  # SHORT values sit left-justified in the 4-byte field
            out += struct.pack("<HHI", tag, typ, count)
            out += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        next_slot = len(out)
        out += struct.pack("<I", 0) + plane.astype("<u2").tobytes() + struct.pack("<4I", 1, 1, 1, 1) + meta
        index.append((*key, ifd))
    rows = b"".join(struct.pack("<5I", *row) for row in index)
    for slot, header, count, body in (
        (12, 3453623, len(index), rows),
        (20, 347834724, 2, b"[]"),
        (28, 84720485, 2, b"{}"),
    ):
        out += b"\0" * (len(out) % 2)
        struct.pack_into("<I", out, slot, len(out))
        out += struct.pack("<II", header, count) + body
    path.write_bytes(bytes(out))


def _mmstack(path: Path, *, planned_frames: int = 2) -> dict[tuple[int, int, int, int], np.ndarray]:
    """2 positions x 2 time points x 2 channels, 32 x 48 px; the summary may plan more time points than written."""
    rng = np.random.default_rng(7)
    planes, meta = {}, {}
    for p in range(2):
        for t in range(2):
            for c in range(2):
                key = (c, 0, t, p)
                planes[key] = rng.integers(0, 4000, (32, 48), dtype=np.uint16)
                meta[key] = {
                    "ElapsedTime-ms": 1000.0 * t + 100.0 * p + 10.0 * c,
                    "XPositionUm": 100.0 * p, "YPositionUm": 200.0 * p, "ZPositionUm": 5.0,
                    "Exposure-ms": 20.0, "PositionName": f"B{p + 2}-Site_0", "Channel": ["DAPI", "FITC"][c],
                }  # fmt: skip
    summary = {
        "MicroManagerVersion": "2.0.3", "Frames": planned_frames, "Channels": 2, "Slices": 1, "Positions": 2,
        "ChNames": ["DAPI", "FITC"], "PixelSize_um": 0.65, "Interval_ms": 1000, "BitDepth": 12,
        "StartTime": "2024-03-24 15:08:45.561 +0100", "Width": 48, "Height": 32, "PixelType": "GRAY16",
    }  # fmt: skip
    _write_mmstack(path, planes, summary, meta)
    return planes


def test_micromanager_mmstack(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    tifffile = _tifffile()
    path = tmp_path / "run_MMStack_Pos0.ome.tif"
    planes = _mmstack(path)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_micromanager
        assert tf.is_mmstack
    r = ingest_images(tmp_lake, path)
    assert (r.n_frames, r.n_positions) == (8, 2)
    rows = _frames(tmp_lake, r.run_id)
    assert [(row["well"], row["x_um"], row["y_um"]) for row in rows if row["t"] == 0 and row["c"] == 0] == [
        ("B2", 0.0, 0.0),
        ("B3", 100.0, 200.0),
    ]
    assert {row["exposure_ms"] for row in rows} == {20.0}
    assert rows[0]["acquired_at"].isoformat() == "2024-03-24T14:08:45.561000+00:00"  # StartTime + ElapsedTime
    assert [row["acquired_at"] for row in rows] == sorted(row["acquired_at"] for row in rows)
    ome = _ome_attrs(r.images[1])
    assert [ch["label"] for ch in ome["omero"]["channels"]] == ["DAPI", "FITC"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0, 0.65, 0.65]
    image = lake.OmeZarrImage.open(r.images[1])
    np.testing.assert_array_equal(image.read_plane(1, 0, 0), planes[(0, 0, 1, 1)])


def test_mmstack_stopped_early_imports_the_planes_it_holds(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    """The summary plans 3 time points, the acquisition wrote 2: tifffile reads the 2, and so does the import."""
    _tifffile()
    path = tmp_path / "stopped_MMStack_Pos0.ome.tif"
    _mmstack(path, planned_frames=3)
    r = ingest_images(tmp_lake, path)
    assert (r.n_frames, r.n_positions) == (8, 2)
    assert lake.OmeZarrImage.open(r.images[0]).shape == (2, 2, 1, 32, 48)


# -- OME-Zarr --------------------------------------------------------------------------------------------------


def test_ome_zarr_v04_example(tmp_lake: lake.Lake) -> None:
    src = need(ZARR_EXAMPLES / "valid" / "image-04.zarr")  # z, y, x = 2 x 64 x 64, float64, two levels
    r = ingest_images(tmp_lake, src)
    assert (r.n_frames, r.n_positions) == (2, 1)
    rows = _frames(tmp_lake, r.run_id)
    assert [(row["z"], row["dtype"], tuple(row["shape"])) for row in rows] == [
        (0, "float64", (64, 64)),
        (1, "float64", (64, 64)),
    ]
    source = zarr.open_group(str(src), mode="r")["0"]
    image = lake.OmeZarrImage.open(r.images[0])
    np.testing.assert_array_equal(image.read_plane(0, 0, 1), np.asarray(source[1]))
    scale = _ome_attrs(r.images[0])["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-3:] == [1.0, 1.0, 1.0]  # micrometer axes with unit scale
    _validate(r.images[0])


def test_ome_zarr_v05_written_by_the_lake(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    rng = np.random.default_rng(3)
    spec = lake.ImageSpec(t=3, c=2, z=2, y=40, x=56, dtype="uint16", pixel_size_um=0.325, z_step_um=1.5,
                          t_interval_s=60.0, channel_names=("GFP", "mCherry"))  # fmt: skip
    src = tmp_path / "source.ome.zarr"
    image = lake.OmeZarrImage.create(src, spec)
    planes = {}
    for t in range(3):
        for c in range(2):
            for z in range(2):
                planes[(t, c, z)] = rng.integers(0, 60000, (40, 56), dtype=np.uint16)
                image.write_plane(t, c, z, planes[(t, c, z)])
    image.close()
    with open_image(src) as reader:
        (pos,) = reader.positions
        assert (reader.format, pos.spec.channel_names) == ("ome-zarr", ("GFP", "mCherry"))
        assert (pos.spec.pixel_size_um, pos.spec.z_step_um, pos.spec.t_interval_s) == (0.325, 1.5, 60.0)

    r = ingest_images(tmp_lake, src)
    assert r.n_frames == 12
    rows = _frames(tmp_lake, r.run_id)
    assert {row["channel"] for row in rows} == {"GFP", "mCherry"}
    copy = lake.OmeZarrImage.open(r.images[0])
    for (t, c, z), plane in planes.items():
        np.testing.assert_array_equal(copy.read_plane(t, c, z), plane)
    assert _ome_attrs(r.images[0])["multiscales"][0]["datasets"] == _ome_attrs(str(src))["multiscales"][0]["datasets"]


def test_ome_zarr_plate_one_position_per_field(tmp_lake: lake.Lake) -> None:
    src = need(ZARR_EXAMPLES / "valid" / "plate-01.zarr")  # 2 x 2 wells, one 1000 x 1000 field each
    r = ingest_images(tmp_lake, src)
    assert (r.n_frames, r.n_positions) == (4, 4)
    rows = _frames(tmp_lake, r.run_id)
    assert [(row["p"], row["well"], tuple(row["shape"])) for row in rows] == [
        (0, "A1", (1000, 1000)),
        (1, "A2", (1000, 1000)),
        (2, "B1", (1000, 1000)),
        (3, "B2", (1000, 1000)),
    ]
    _validate(r.images[3])


def test_plain_tiff_field(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    tifffile = _tifffile()
    plane = np.random.default_rng(5).integers(0, 65535, (70, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "1000_B3_1_red.tif", plane)  # no OME-XML: a plain 2D TIFF
    r = ingest_images(tmp_lake, tmp_path / "1000_B3_1_red.tif")
    (row,) = _frames(tmp_lake, r.run_id)
    assert (row["well"], tuple(row["shape"]), row["dtype"]) == ("B3", (70, 90), "uint16")
    np.testing.assert_array_equal(lake.OmeZarrImage.open(r.images[0]).read_plane(0, 0, 0), plane)
    summary = lake.query(tmp_lake, "SELECT summary FROM acquisition_runs")["summary"][0].as_py()
    assert json.loads(summary)["format"] == "tiff"


# -- HPA field with masks ---------------------------------------------------------------------------------------


def test_hpa_field_with_masks(tmp_lake: lake.Lake) -> None:
    calls: list[tuple[str, int, int | None]] = []
    r = ingest_images(
        tmp_lake,
        need(HPA_GREEN),
        masks=[need(HPA_CELLS), need(HPA_NUCLEI)],
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert (r.n_frames, r.n_objects, r.n_positions) == (1, 42, 1)
    assert ("write images", 1, 1) in calls
    assert calls[-1] == ("commit", 1, 1)
    counts = lake.query(tmp_lake, "SELECT class, count(*) AS n FROM objects GROUP BY class ORDER BY class")
    assert counts.to_pylist() == [{"class": "cell", "n": 21}, {"class": "nucleus", "n": 21}]
    (frame,) = _frames(tmp_lake, r.run_id)
    assert (frame["well"], tuple(frame["shape"]), frame["dtype"], frame["channel"]) == (
        "A12",
        (2048, 2048),
        "uint16",
        None,
    )
    green = np.asarray(Image.open(HPA_GREEN))
    assert frame["mean"] == pytest.approx(float(green.mean()))

    objects = lake.query(tmp_lake, f"SELECT * FROM objects WHERE run_id = '{r.run_id}' ORDER BY object_id")
    for klass, mask_path in (("cell", HPA_CELLS), ("nucleus", HPA_NUCLEI)):
        mask = np.asarray(Image.open(mask_path))
        rows = objects.filter(pc.equal(objects["class"], klass))
        assert pc.sum(rows["area"]).as_py() == np.count_nonzero(mask)
        assert set(rows["frame_id"].to_pylist()) == {frame["frame_id"]}
        assert set(rows["score"].to_pylist()) == {1.0}
        # label 5: id, centroid and intensities against numpy on the source arrays
        offset = 0 if klass == "cell" else OBJECT_ID_STRIDE
        row = rows.filter(pc.equal(rows["object_id"], offset + 5)).to_pylist()[0]
        ys, xs = np.nonzero(mask == 5)
        assert (row["centroid_x"], row["centroid_y"]) == (pytest.approx(xs.mean()), pytest.approx(ys.mean()))
        assert row["mean_intensity"] == pytest.approx(float(green[mask == 5].mean()))
        assert row["max_intensity"] == float(green[mask == 5].max())
    assert objects["object_id"].to_pylist() == sorted(set(objects["object_id"].to_pylist()))  # unique per frame


def test_reingest_is_a_no_op(tmp_lake: lake.Lake) -> None:
    first = ingest_images(tmp_lake, need(HPA_GREEN), masks=[need(HPA_CELLS), need(HPA_NUCLEI)])
    before = _versions(tmp_lake)
    again = ingest_images(tmp_lake, HPA_GREEN, masks=[HPA_CELLS, HPA_NUCLEI])
    assert again == ImageIngest(first.run_id, first.dataset_id, 1, 42, 1, first.images, skipped=True)
    assert _versions(tmp_lake) == before
    # The same image without masks is other content: a second dataset, under a name made unique.
    alone = ingest_images(tmp_lake, HPA_GREEN)
    assert not alone.skipped
    assert alone.run_id != first.run_id
    names = sorted(lake.query(tmp_lake, "SELECT name FROM datasets")["name"].to_pylist())
    assert names == ["hpa_1000_A12_2_green", f"hpa_1000_A12_2_green-{alone.dataset_id[:8]}"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http_source_is_downloaded_like_an_atlas(tmp_lake: lake.Lake) -> None:
    handler = functools.partial(_QuietHandler, directory=str(need(HPA_DIR)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{HPA_GREEN.name}"
        r = ingest_images(tmp_lake, url)
    finally:
        server.shutdown()
    (ds,) = lake.query(tmp_lake, "SELECT source_uri, kind, n_obs, n_vars FROM datasets").to_pylist()
    assert ds == {"source_uri": url, "kind": "images", "n_obs": 1, "n_vars": 0}
    assert _frames(tmp_lake, r.run_id)[0]["well"] == "A12"


# -- bad input -------------------------------------------------------------------------------------------------


def _corrupt_tiff(tmp: Path) -> tuple[Path, list[Path], str]:
    _tifffile()
    (tmp / "random.ome.tif").write_bytes(np.random.default_rng(0).bytes(20_000))
    return tmp / "random.ome.tif", [], r"random\.ome\.tif: is not a readable TIFF file"


def _truncated_ome_tiff(tmp: Path) -> tuple[Path, list[Path], str]:
    _tifffile()
    data = need(OME_TIFF / "multi-channel-z-series.ome.tif").read_bytes()
    (tmp / "cut.ome.tif").write_bytes(data[: len(data) * 6 // 10])
    return tmp / "cut.ome.tif", [], r"cut\.ome\.tif: has no readable OME-XML metadata \(truncated"


def _ome_tiff_missing_planes(tmp: Path) -> tuple[Path, list[Path], str]:
    """OME-XML describing 4 time points over 2 pages: tifffile would zero-fill the other 2; the import refuses."""
    tifffile = _tifffile()
    from ome_types.model import OME, Pixels, TiffData
    from ome_types.model import Image as OmeImage

    px = Pixels(dimension_order="XYZCT", type="uint16", size_x=40, size_y=30, size_z=1, size_c=1, size_t=4,
                tiff_data_blocks=[TiffData(plane_count=4)])  # fmt: skip
    xml = OME(images=[OmeImage(id="Image:0", pixels=px)]).to_xml()
    tifffile.imwrite(tmp / "short.ome.tif", np.ones((2, 30, 40), np.uint16), description=xml.encode(), metadata=None)
    return tmp / "short.ome.tif", [], r"short\.ome\.tif: plane 2 is missing"


def _zarr_without_multiscales(tmp: Path) -> tuple[Path, list[Path], str]:
    src = need(ZARR_EXAMPLES / "invalid" / "image-02.zarr")
    return src, [], r"image-02\.zarr: is not a valid OME-Zarr 0\.4 image \(multiscales: List should have at least 1"


def _zarr_without_array(tmp: Path) -> tuple[Path, list[Path], str]:
    src = need(ZARR_EXAMPLES / "invalid" / "image-03.zarr")
    return src, [], r"image-03\.zarr: is not a valid OME-Zarr 0\.4 image \(Expected to find an array at 0"


def _missing(tmp: Path) -> tuple[Path, list[Path], str]:
    return tmp / "nothing.ome.tif", [], r"no such file or folder: .*nothing\.ome\.tif"


def _mask_wrong_shape(tmp: Path) -> tuple[Path, list[Path], str]:
    Image.fromarray(np.ones((100, 120), dtype=np.uint16)).save(tmp / "small_cellmask.png")
    return (
        need(HPA_GREEN),
        [need(HPA_NUCLEI), tmp / "small_cellmask.png"],
        r"small_cellmask\.png: mask shape \(100, 120\) differs",
    )


@pytest.mark.parametrize(
    "case",
    [
        _corrupt_tiff,
        _truncated_ome_tiff,
        _ome_tiff_missing_planes,
        _zarr_without_multiscales,
        _zarr_without_array,
        _missing,
        _mask_wrong_shape,
    ],
)
def test_bad_input_leaves_the_lake_unchanged(
    tmp_path: Path, tmp_lake: lake.Lake, case: Callable[[Path], tuple[Path, list[Path], str]]
) -> None:
    source, masks, message = case(tmp_path)
    before = _versions(tmp_lake)
    with pytest.raises(lake.InvalidInputError, match=message) as err:
        ingest_images(tmp_lake, source, masks=masks)
    assert "\n" not in str(err.value)
    assert _versions(tmp_lake) == before
    assert not (Path(tmp_lake.root) / "images").exists() or not any((Path(tmp_lake.root) / "images").iterdir())


# -- a killed import -------------------------------------------------------------------------------------------


def _kill_import(root: Path, point: str) -> None:
    """Run an import of the HPA field with its masks in a process that SIGKILLs itself at ``point``."""
    code = (
        "import sys, lake; from acquisition._images_ingest import ingest_images; "
        "ingest_images(lake.Lake.open(sys.argv[1]), sys.argv[2], masks=sys.argv[3:])"
    )
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": pythonpath}
    args = [str(root), str(need(HPA_GREEN)), str(need(HPA_CELLS)), str(need(HPA_NUCLEI))]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {proc.returncode}: {proc.stderr}"


def test_killed_import_is_invisible_and_the_next_one_recovers(tmp_path: Path) -> None:
    """Killed right after its `frames` append, before its run and dataset rows."""
    _kill_import(tmp_path / "lake", "frames")
    target = lake.Lake.open(tmp_path / "lake")
    on_disk = target.read("frames")
    assert on_disk.num_rows == 1  # the append was committed before the kill...
    run_id = on_disk["run_id"][0].as_py()
    assert lake.query(target, "SELECT count(*) AS n FROM frames").to_pylist() == [{"n": 0}]  # ...but is invisible
    assert target.read("acquisition_runs").num_rows == 0
    assert target.read("datasets").num_rows == 0
    assert (Path(target.root) / "images" / run_id / "p000.ome.zarr").is_dir()

    r = ingest_images(target, HPA_GREEN, masks=[HPA_CELLS, HPA_NUCLEI])
    assert (r.run_id, r.n_frames, r.n_objects, r.skipped) == (run_id, 1, 42, False)
    assert target.read("frames").num_rows == 1  # the leftovers were replaced, not doubled
    assert target.read("objects").num_rows == 42
    assert lake.query(target, "SELECT count(*) AS n FROM frames").to_pylist() == [{"n": 1}]
    assert lake.query(target, "SELECT count(*) AS n FROM objects").to_pylist() == [{"n": 42}]
    (run,) = lake.query(target, "SELECT status, microscope_id, n_frames, summary FROM acquisition_runs").to_pylist()
    assert (run["status"], run["microscope_id"], run["n_frames"]) == ("completed", "import", 1)
    assert json.loads(run["summary"])["format"] == "png"


def test_import_killed_before_registering_is_removed_by_the_next_import(tmp_path: Path) -> None:
    """Killed after its run row, before its dataset row: the next import, of any source, removes that run."""
    _kill_import(tmp_path / "lake", "run")
    target = lake.Lake.open(tmp_path / "lake")
    (orphan,) = target.read("acquisition_runs")["run_id"].to_pylist()
    assert target.read("datasets").num_rows == 0
    Image.fromarray(np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)).save(tmp_path / "other.png")
    other = ingest_images(target, tmp_path / "other.png")
    assert lake.query(target, "SELECT DISTINCT run_id FROM frames").to_pylist() == [{"run_id": other.run_id}]
    assert target.read("acquisition_runs")["run_id"].to_pylist() == [other.run_id]
    assert target.read("objects").num_rows == 0
    assert not (Path(target.root) / "images" / orphan).exists()
