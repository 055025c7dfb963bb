"""The digital-twin microscope: real pymmcore-plus devices, a real MDA, a simulated sample with ground truth."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import useq
from pymmcore_plus.experimental.unicore import UniMMCore
from scipy import ndimage as ndi

from acquisition.twin import TwinConfig, TwinEvent, TwinSample, create_twin_core

Twin = tuple[UniMMCore, TwinSample]


def _close(core: UniMMCore) -> None:
    core.unloadAllDevices()
    gc.collect()


@pytest.fixture
def twin() -> Iterator[Twin]:
    core, sample = create_twin_core(TwinConfig(seed=3))
    yield core, sample
    _close(core)


def _snap(core: UniMMCore) -> np.ndarray:
    core.snapImage()
    return np.array(core.getImage())


def _signal(img: np.ndarray, cfg: TwinConfig) -> float:
    return float(img.mean()) - cfg.offset_adu


def _cell_signal(img: np.ndarray) -> float:
    """Brightness of the nuclei above the background."""
    return float(np.percentile(img, 99.5) - np.median(img))


def _focus_metric(img: np.ndarray) -> float:
    return float(ndi.laplace(img.astype(np.float32)).var())


def _truth(events: list[TwinEvent]) -> list[tuple[Any, ...]]:
    # wall times differ between samples made at different instants; everything else must match
    return [(e.kind, e.cell_id, e.parent_id, e.sim_time_s, e.x_um, e.y_um, e.dose, e.end_sim_time_s) for e in events]


def test_core_is_ready(twin: Twin) -> None:
    core, sample = twin
    cfg = sample.config
    assert {"Camera", "XY", "Z", "Shutter", "LED"} <= set(core.getLoadedDevices())
    assert core.getCameraDevice() == "Camera"
    assert core.getXYStageDevice() == "XY"
    assert core.getFocusDevice() == "Z"
    assert core.getShutterDevice() == "Shutter"
    assert core.getPixelSizeUm() == pytest.approx(cfg.pixel_size_um)
    assert core.getChannelGroup() == "Channel"
    assert set(core.getAvailableConfigs("Channel")) == {"GFP", "mCherry"}
    assert float(core.getProperty("LED", "Power")) == 50.0
    core.setProperty("LED", "Power", 20.0)
    assert float(core.getProperty("LED", "Power")) == 20.0
    with pytest.raises(ValueError, match="allowed range"):
        core.setProperty("LED", "Power", 150.0)
    core.setConfig("Channel", "mCherry")
    assert core.getProperty("LED", "Channel") == "mCherry"
    assert core.getCurrentConfig("Channel") == "mCherry"
    img = _snap(core)
    assert img.shape == (cfg.height, cfg.width)
    assert img.dtype == np.uint16
    meta = sample.last_metadata  # snapImage() drops what the camera returns; the sample keeps it
    assert meta["twin_channel"] == "mCherry"
    assert 0 <= meta["twin_sim_time_s"] <= sample.now()


def test_mda_with_time_plan_yields_frames(twin: Twin) -> None:
    core, sample = twin
    frames: list[tuple[np.ndarray, useq.MDAEvent]] = []
    core.mda.events.frameReady.connect(lambda img, event, meta: frames.append((np.array(img), event)))
    t_before = sample.now()
    seq = useq.MDASequence(
        channels=["GFP"],
        stage_positions=[(0, 0, 0), (500, 0, 0)],
        time_plan={"interval": 0.5, "loops": 3},
        z_plan={"range": 4, "step": 2},
    )
    core.mda.run(seq)
    assert len(frames) == 3 * 2 * 3
    assert all(img.shape == (512, 512) and img.dtype == np.uint16 for img, _ in frames)
    assert {ev.index["p"] for _, ev in frames} == {0, 1}
    assert {ev.z_pos for _, ev in frames} == {-2.0, 0.0, 2.0}
    # the stage went to both positions: the light reached both fields, and nothing in between
    assert sample.health(0, 0)["mean_dose"] > 0
    assert sample.health(500, 0)["mean_dose"] > 0
    assert sample.health(3000, 3000)["max_dose"] == 0
    assert sample.now() - t_before >= 0.9 * sample.config.time_scale  # >= 1 wall second of sim time


def test_exposure_and_power_raise_the_signal(twin: Twin) -> None:
    core, sample = twin
    cfg = sample.config
    core.setExposure(10.0)
    short = _signal(_snap(core), cfg)
    core.setExposure(80.0)
    long = _signal(_snap(core), cfg)
    core.setProperty("LED", "Power", 10.0)
    dim = _signal(_snap(core), cfg)
    core.setProperty("LED", "Power", 90.0)
    bright = _signal(_snap(core), cfg)
    assert long > 4 * short > 0
    assert bright > 4 * dim > 0


def test_closed_shutter_gives_a_dark_frame(twin: Twin) -> None:
    core, sample = twin
    cfg = sample.config
    core.setAutoShutter(False)
    core.setShutterOpen(False)
    dark = _snap(core)
    assert abs(float(dark.mean()) - cfg.offset_adu) < 1.0
    assert float(dark.std()) == pytest.approx(cfg.read_noise_adu, rel=0.1)
    assert sample.health(0, 0)["max_dose"] == 0.0  # no light, no dose
    core.setShutterOpen(True)
    lit = _snap(core)
    assert _signal(lit, cfg) > 10 * abs(_signal(dark, cfg)) + 5
    assert sample.health(0, 0)["max_dose"] > 0.0


def test_defocus_blurs(twin: Twin) -> None:
    core, sample = twin
    x, y = 2000.0, -3000.0
    core.setXYPosition(x, y)
    focus = sample.focal_plane_um(x, y)
    core.setPosition(focus)
    sharp = _focus_metric(_snap(core))
    core.setPosition(focus + 10.0)
    blurred = _focus_metric(_snap(core))
    core.setPosition(focus - 10.0)
    blurred_below = _focus_metric(_snap(core))
    assert sharp > 3 * blurred
    assert sharp > 3 * blurred_below


def test_saturation_is_reachable(twin: Twin) -> None:
    core, sample = twin
    full = 2**sample.config.bit_depth - 1
    assert int(_snap(core).max()) < full
    core.setProperty("LED", "Power", 100.0)
    core.setExposure(2000.0)
    img = _snap(core)
    assert int(img.max()) == full
    assert float((img == full).mean()) > 0.005


def test_stage_limits(twin: Twin) -> None:
    core, _sample = twin
    core.setXYPosition(1000.0, -2000.0)
    with pytest.raises(ValueError, match="outside the stage limits"):
        core.setXYPosition(60_000.0, 0.0)
    assert core.getXYPosition() == pytest.approx((1000.0, -2000.0))
    with pytest.raises(ValueError, match="outside the focus limits"):
        core.setPosition(900.0)
    core.setPosition(-499.0)
    assert core.getPosition() == pytest.approx(-499.0)


def test_same_seed_same_truth() -> None:
    cfg = TwinConfig(seed=7, time_scale=0)
    places = [(0.0, 0.0), (3000.0, -1000.0)]
    a, b = TwinSample(cfg), TwinSample(cfg)
    # a is looked at early and stepped; b is generated late, in one jump: the same history either way
    for x, y in places:
        a.cells_in_view(x, y)
    for _ in range(4):
        a.advance(1800.0)
        a.cells_in_view(*places[0])
    b.advance(7200.0)
    for x, y in places:
        b.cells_in_view(x, y)
    assert a.now() == b.now() == 7200.0
    ev_a, ev_b = a.events(), b.events()
    assert any(e.kind == "division" and e.end_sim_time_s is not None for e in ev_a)
    assert _truth(ev_a) == _truth(ev_b)
    for x, y in places:
        va, vb = a.cells_in_view(x, y), b.cells_in_view(x, y)
        assert np.array_equal(va["ids"], vb["ids"])
        assert np.allclose(va["x"], vb["x"])
        assert np.array_equal(va["in_mitosis"], vb["in_mitosis"])
    other = TwinSample(TwinConfig(seed=8, time_scale=0))
    other.advance(7200.0)
    for x, y in places:
        other.cells_in_view(x, y)
    assert _truth(other.events()) != _truth(ev_a)


def test_events_carry_wall_times() -> None:
    sample = TwinSample(TwinConfig(seed=2, time_scale=60.0))
    made = datetime.now(UTC)
    sample.cells_in_view(0, 0)
    sample.advance(7200.0)
    events = [e for e in sample.events() if e.sim_time_s >= 0]
    assert events
    for e in events:
        assert e.wall_time.tzinfo is not None
        assert e.wall_time.utcoffset() == UTC.utcoffset(None)
        assert made.timestamp() - 1 <= e.wall_time.timestamp() <= datetime.now(UTC).timestamp() + 1
        if e.end_wall_time is not None:
            assert e.end_sim_time_s is not None
            assert e.end_sim_time_s > e.sim_time_s
            assert e.end_wall_time >= e.wall_time


def test_divisions_occur_at_the_configured_rate() -> None:
    cfg = TwinConfig(seed=5, time_scale=0)
    sample = TwinSample(cfg)
    cycle = cfg.mean_cycle_s
    for k in range(4):
        sample.cells_in_view(1000.0 * k, 0.0)
    sample.advance(cycle)  # let the density settle at its crowding cap
    t1, n1 = sample.now(), sample.health()["n_alive"]
    sample.advance(3 * cycle)
    t2, n2 = sample.now(), sample.health()["n_alive"]
    events = sample.events()
    starts = [e for e in events if e.kind == "division" and t1 < e.sim_time_s <= t2]
    # each cell divides mean_cycle_s after its birth ...
    born = {d: e.end_sim_time_s for e in events if e.daughter_ids for d in e.daughter_ids}
    cycles = [e.sim_time_s + cfg.mitosis_duration_s - born[e.cell_id] for e in starts if e.cell_id in born]
    assert len(cycles) > 100
    assert float(np.mean(cycles)) == pytest.approx(cycle, rel=0.05)
    # ... so a population with a steady age structure divides at ln(2) / mean_cycle_s per cell
    rate = len(starts) / ((n1 + n2) / 2 * (t2 - t1))
    assert rate == pytest.approx(np.log(2) / cycle, rel=0.15)
    # the mitotic index follows from the durations
    v = sample.cells_in_view(1000.0, 0.0, margin_um=300.0)
    assert 0.03 < v["in_mitosis"].mean() < 0.25
    # a 512 x 512 field sees several divisions in one default minute of wall time (3600 sim seconds)
    w, h = cfg.fov_um
    in_field = [
        e for e in starts if t1 < e.sim_time_s <= t1 + 60 * 60 and abs(e.x_um - 1000.0) < w / 2 and abs(e.y_um) < h / 2
    ]
    assert len(in_field) >= 3


def test_heavy_light_bleaches_arrests_and_kills(twin: Twin) -> None:
    core, sample = twin
    cfg = sample.config
    core.setXYPosition(0.0, 0.0)
    before = _cell_signal(_snap(core))
    core.setProperty("LED", "Power", 100.0)
    core.setExposure(5000.0)
    for _ in range(8):
        core.snapImage()
    core.setProperty("LED", "Power", 50.0)
    core.setExposure(cfg.default_exposure_ms)
    after = _cell_signal(_snap(core))
    lit = sample.health(0.0, 0.0)
    dark = sample.health(20_000.0, 20_000.0)  # a field nobody imaged
    assert lit["n_cells"] > 10
    assert lit["mean_dose"] > 8 * 100 * 5000 * 0.8
    assert lit["n_dead"] + lit["n_arrested"] >= 0.8 * lit["n_cells"]
    assert lit["fraction_healthy"] < 0.2
    assert after < 0.3 * before  # bleached (the medium's autofluorescence does not bleach)
    assert dark["n_cells"] > 10
    assert dark["fraction_healthy"] == 1.0
    assert dark["max_dose"] == 0.0
    kinds = {e.kind for e in sample.events()}
    assert {"death", "arrest"} <= kinds
    for e in sample.events():
        if e.kind == "death":
            assert e.dose >= cfg.death_dose
        elif e.kind == "arrest":
            assert cfg.arrest_dose <= e.dose < cfg.death_dose


def test_ground_truth_while_an_mda_runs(twin: Twin) -> None:
    core, sample = twin
    seq = useq.MDASequence(
        channels=["GFP", "mCherry"],
        stage_positions=[(0, 0, 0), (1500, 0, 0), (0, 1500, 0)],
        time_plan={"interval": 0, "loops": 10},
    )
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            while thread.is_alive():
                sample.events()
                sample.health()
                sample.cells_in_view(1500.0, 0.0)
        except BaseException as e:  # pragma: no cover - a failure is reported below
            errors.append(e)

    thread = core.run_mda(seq)
    poller = threading.Thread(target=poll)
    poller.start()
    thread.join(timeout=60)
    poller.join(timeout=10)
    assert not errors
    assert sample.health()["n_tiles"] >= 4


def test_large_frames_render() -> None:
    # rendering cost is measured in bench/, not asserted here; this only exercises a 2048 x 2048 camera
    core, sample = create_twin_core(TwinConfig(seed=1, width=2048, height=2048))
    try:
        for z in (0.0, 5.0, 60.0):
            core.setPosition(z)
            img = _snap(core)
            assert img.shape == (2048, 2048)
        assert sample.cells_in_view(0.0, 0.0)["ids"].size > 200  # the same plate density, a bigger field
    finally:
        _close(core)


def test_loads_into_an_existing_core() -> None:
    core = UniMMCore()
    try:
        same, sample = create_twin_core(TwinConfig(seed=4, width=128, height=96), core=core)
        assert same is core
        assert _snap(core).shape == (96, 128)
        with pytest.raises(ValueError, match="already has devices"):
            create_twin_core(core=core)
        assert sample.config.seed == 4
    finally:
        _close(core)
