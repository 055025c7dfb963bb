"""The twin's sample: a lazily generated, time-evolving cell population, its clock, its ground truth."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from acquisition.twin._config import CHANNELS, TwinConfig
from acquisition.twin._events import EventKind, TwinEvent
from acquisition.twin._population import DEAD, MITOSIS, EventRecord, Tile, tile_range
from acquisition.twin._render import FrameRenderer

__all__ = ["TwinSample"]

F64 = npt.NDArray[np.float64]


class TwinSample:
    """A simulated plate of dividing cells, on a clock that runs `time_scale` times faster than the wall.

    The plate is endless within the stage limits: its population is generated per square tile
    (`TwinConfig.tile_um`) the first time anything looks near it (a snap, `cells_in_view`, `health` with a
    position), deterministically from the seed and the tile index, and caught up from sim time 0 to now.
    Ground truth (`events`, `health`) therefore covers only the tiles generated so far: the places that
    were imaged or queried and a margin around them. Two samples with the same config, asked about the
    same places at the same sim times, agree exactly as long as neither was illuminated differently.

    Thread-safe: the camera renders on the acquisition thread while others ask for the ground truth.
    """

    def __init__(self, config: TwinConfig | None = None) -> None:
        self._cfg = config or TwinConfig()
        cfg = self._cfg
        self._lock = threading.RLock()
        self._render_lock = threading.Lock()
        self._tiles: dict[tuple[int, int], Tile] = {}
        self._t0_mono = time.monotonic()
        self._t0_utc = datetime.now(UTC)
        self._jumped = 0.0
        # (wall seconds since creation, sim before, sim after) for each advance(), to map sim -> wall
        self._jumps: list[tuple[float, float, float]] = []
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xF0C5]))
        # µm of focal-plane height per µm of stage travel, per axis
        self._tilt = rng.uniform(-1.0, 1.0, 2) * cfg.focus_tilt_um_per_mm / 1000.0
        self._renderer = FrameRenderer(cfg.seed, vignetting=cfg.vignetting)
        self._last_metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ clock

    @property
    def config(self) -> TwinConfig:
        return self._cfg

    @property
    def last_metadata(self) -> dict[str, Any]:
        """Metadata of the latest frame (`snapImage` drops what the camera returns; this keeps it)."""
        return dict(self._last_metadata)

    def now(self) -> float:
        """Sim seconds since the sample was made: wall-clock time times `time_scale`, plus any `advance`."""
        return (time.monotonic() - self._t0_mono) * self._cfg.time_scale + self._jumped

    def advance(self, seconds: float) -> None:
        """Jump the sim clock ahead (e.g. to let cells divide in a test); the cells evolve as if time passed."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"advance() takes a finite, non-negative number of sim seconds, not {seconds!r}")
        with self._lock:
            before = self.now()
            self._jumped += seconds
            self._jumps.append((time.monotonic() - self._t0_mono, before, before + seconds))

    def wall_time(self, sim_time_s: float) -> datetime:
        """The UTC time at which the sim clock read `sim_time_s` (inside an `advance` jump: the jump's instant)."""
        scale = self._cfg.time_scale
        wall = sim_time_s / scale if scale > 0 else 0.0
        for wall_at, sim_before, sim_after in self._jumps:
            if sim_time_s < sim_before:
                break
            wall = wall_at if sim_time_s <= sim_after or scale <= 0 else wall_at + (sim_time_s - sim_after) / scale
        return self._t0_utc + timedelta(seconds=wall)

    # ------------------------------------------------------------------ space

    def focal_plane_um(self, x_um: float, y_um: float) -> float:
        """The Z at which the plate bottom (and the cells on it) at (x, y) is in focus."""
        return float(self._tilt[0] * x_um + self._tilt[1] * y_um)

    def _tiles_in(self, xmin: float, xmax: float, ymin: float, ymax: float, t: float) -> list[Tile]:
        """The tiles whose cells may lie in the rectangle, generated if new and advanced to `t`."""
        cfg = self._cfg
        # cells wander around their birthplace and daughters land beside their mother
        margin = 4 * cfg.motility_um + 3 * cfg.cell_radius_um
        tiles = []
        for ix in tile_range(xmin - margin, xmax + margin, cfg.tile_um):
            for iy in tile_range(ymin - margin, ymax + margin, cfg.tile_um):
                tile = self._tiles.get((ix, iy))
                if tile is None:
                    tile = self._tiles[(ix, iy)] = Tile(ix, iy, cfg)
                tile.advance(t)
                tiles.append(tile)
        return tiles

    def _gather(self, tiles: list[Tile], t: float) -> dict[str, Any]:
        snaps = [tile.snapshot(t) for tile in tiles]
        return {k: np.concatenate([s[k] for s in snaps]) for k in snaps[0]}

    def _field(self, x_um: float, y_um: float, margin_um: float = 0.0) -> tuple[float, float, float, float]:
        w, h = self._cfg.fov_um
        w2, h2 = w / 2 + margin_um, h / 2 + margin_um
        return x_um - w2, x_um + w2, y_um - h2, y_um + h2

    # ------------------------------------------------------------------ ground truth

    def cells_in_view(self, x_um: float, y_um: float, *, margin_um: float = 0.0) -> dict[str, npt.NDArray[Any]]:
        """The cells whose centre lies in the camera field centred on (x, y), now.

        `margin_um` grows the field on every side (cells cut by the frame's edge are partly visible).
        Arrays: ``ids``, ``x``, ``y`` (µm), ``row``, ``col`` (pixel coordinates in that frame, outside
        [0, height) x [0, width) in the margin), ``in_mitosis`` (alive and in mitosis), ``dead``, ``arrested``,
        ``dose``, ``radius_um`` (nucleus).
        """
        with self._lock:
            t = self.now()
            fxmin, _, fymin, _ = self._field(x_um, y_um)
            xmin, xmax, ymin, ymax = self._field(x_um, y_um, margin_um)
            s = self._gather(self._tiles_in(xmin, xmax, ymin, ymax, t), t)
        keep = (s["x"] >= xmin) & (s["x"] < xmax) & (s["y"] >= ymin) & (s["y"] < ymax)
        px = self._cfg.pixel_size_um
        return {
            "ids": s["ids"][keep],
            "x": s["x"][keep],
            "y": s["y"][keep],
            "row": (s["y"][keep] - fymin) / px - 0.5,
            "col": (s["x"][keep] - fxmin) / px - 0.5,
            "in_mitosis": s["phase"][keep] == MITOSIS,
            "dead": s["phase"][keep] == DEAD,
            "arrested": s["arrested"][keep] & (s["phase"][keep] != DEAD),
            "dose": s["dose"][keep],
            "radius_um": s["r_nuc"][keep],
        }

    def _wall(self, t: float | None) -> datetime | None:
        return None if t is None else self.wall_time(t)

    def _to_event(self, r: EventRecord) -> TwinEvent:
        return TwinEvent(
            kind=cast(EventKind, r.kind),
            cell_id=r.cell_id,
            parent_id=r.parent_id,
            sim_time_s=r.t,
            wall_time=self.wall_time(r.t),
            x_um=r.x,
            y_um=r.y,
            dose=r.dose,
            end_sim_time_s=r.end_t,
            end_wall_time=self._wall(r.end_t),
            daughter_ids=r.daughters,
        )

    def events(self) -> list[TwinEvent]:
        """Every division, arrest and death so far in the generated tiles, in time order.

        Includes the history of a tile from before it was generated (sim time 0 on; a division under way
        at time 0 starts at a negative sim time).
        """
        with self._lock:
            t = self.now()
            records: list[EventRecord] = []
            for tile in self._tiles.values():
                tile.advance(t)
                records.extend(tile.events)
            records.sort(key=lambda r: (r.t, r.cell_id, r.kind))
            return [self._to_event(r) for r in records]

    def health(self, x_um: float | None = None, y_um: float | None = None) -> dict[str, float]:
        """Counts and dose over the generated tiles, or over the camera field at (x, y) when given.

        Keys: n_cells (on the plate, dead ones included), n_alive, n_arrested (alive but arrested),
        n_dead, mean_dose, max_dose, n_divisions (completed), fraction_healthy (alive and cycling /
        n_cells), sim_time_s, n_tiles.
        """
        with self._lock:
            t = self.now()
            region = None if x_um is None or y_um is None else self._field(x_um, y_um)
            if region is not None:
                tiles = self._tiles_in(*region, t)
            else:
                tiles = list(self._tiles.values())
                for tile in tiles:
                    tile.advance(t)
            if not tiles:
                return _empty_health(t)
            s = self._gather(tiles, t)
            records = [r for tile in tiles for r in tile.events if r.kind == "division" and r.end_t is not None]
            n_tiles = len(self._tiles)
        if region is not None:
            xmin, xmax, ymin, ymax = region
            keep = (s["x"] >= xmin) & (s["x"] < xmax) & (s["y"] >= ymin) & (s["y"] < ymax)
            s = {k: v[keep] for k, v in s.items()}
            records = [r for r in records if xmin <= r.x < xmax and ymin <= r.y < ymax]
        dead = s["phase"] == DEAD
        n = int(dead.size)
        arrested = s["arrested"] & ~dead
        dose = s["dose"]
        return {
            "n_cells": float(n),
            "n_alive": float(n - int(dead.sum())),
            "n_arrested": float(arrested.sum()),
            "n_dead": float(dead.sum()),
            "mean_dose": float(dose.mean()) if n else 0.0,
            "max_dose": float(dose.max()) if n else 0.0,
            "n_divisions": float(len(records)),
            "fraction_healthy": float((~dead & ~arrested).sum() / n) if n else 1.0,
            "sim_time_s": t,
            "n_tiles": float(n_tiles),
        }

    # ------------------------------------------------------------------ imaging

    def render(
        self,
        *,
        x_um: float,
        y_um: float,
        z_um: float = 0.0,
        channel: str = "GFP",
        exposure_ms: float | None = None,
        power_pct: float = 50.0,
        light_on: bool = True,
        out: npt.NDArray[np.uint16] | None = None,
    ) -> tuple[npt.NDArray[np.uint16], dict[str, Any]]:
        """Snap a frame of the field centred on (x, y) at focus z, and give the cells in it the light dose.

        This is what the twin's camera calls; it is public for benchmarks and for tests that want frames
        without a core. Pixel (r, c) images the plate at x + (c + 0.5 - width/2) * pixel_size, and likewise
        for y and the rows. Returns the uint16 frame (`out` when given) and metadata.
        """
        cfg = self._cfg
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; the twin has {list(CHANNELS)}")
        exposure = cfg.default_exposure_ms if exposure_ms is None else float(exposure_ms)
        power = min(max(float(power_pct), 0.0), 100.0)
        lit = bool(light_on) and power > 0 and exposure > 0
        dose = power * exposure if lit else 0.0
        px = cfg.pixel_size_um
        shape = (cfg.height, cfg.width)
        if out is None:
            out = np.empty(shape, np.uint16)
        elif out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the twin's camera makes {shape}")
        field = self._field(x_um, y_um)
        xmin, xmax, ymin, ymax = field
        max_sigma_um = cfg.max_defocus_sigma_px * px
        pad = 1.2 * cfg.cell_radius_um + 3 * max_sigma_um
        with self._lock:
            t = self.now()
            tiles = self._tiles_in(xmin - pad, xmax + pad, ymin - pad, ymax + pad, t)
            s = self._gather(tiles, t)  # the frame shows the cells as the exposure starts
            if dose > 0:
                for tile in tiles:
                    tile.illuminate(*field, dose, t)
        near = (s["x"] >= xmin - pad) & (s["x"] < xmax + pad) & (s["y"] >= ymin - pad) & (s["y"] < ymax + pad)
        s = {k: v[near] for k, v in s.items()}
        in_fov = (s["x"] >= xmin) & (s["x"] < xmax) & (s["y"] >= ymin) & (s["y"] < ymax)
        meta: dict[str, Any] = {
            "twin_sim_time_s": t,
            "twin_x_um": float(x_um),
            "twin_y_um": float(y_um),
            "twin_z_um": float(z_um),
            "twin_focal_plane_um": self.focal_plane_um(x_um, y_um),
            "twin_channel": channel,
            "twin_exposure_ms": exposure,
            "twin_light_power": power,
            "twin_light_on": lit,
            "twin_dose": dose,
            "twin_n_cells": int(in_fov.sum()),
            "twin_n_mitotic": int((in_fov & (s["phase"] == MITOSIS)).sum()),
        }
        with self._render_lock:
            self._render(s, t, xmin, ymin, z_um, channel, exposure, power, lit, out)
            self._last_metadata = meta
        return out, meta

    def _render(
        self,
        s: dict[str, Any],
        t: float,
        xmin: float,
        ymin: float,
        z_um: float,
        channel: str,
        exposure: float,
        power: float,
        lit: bool,
        out: npt.NDArray[np.uint16],
    ) -> None:
        cfg = self._cfg
        px = cfg.pixel_size_um
        renderer = self._renderer
        gfp = channel == "GFP"
        img = renderer.begin((cfg.height, cfg.width), cfg.background)
        if lit and s["x"].size:
            phase = s["phase"]
            mitotic, dead = phase == MITOSIS, phase == DEAD
            bleach = np.exp(-s["dose"] / (cfg.bleach_dose_gfp if gfp else cfg.bleach_dose_mcherry))
            fade = np.where(dead, np.exp(-np.maximum(t - s["t_death"], 0.0) / cfg.death_fade_s), 1.0)
            # dying cells shrink (pyknosis) and fade; mitotic cells round up
            if gfp:
                radius = s["r_nuc"] * np.where(mitotic, cfg.mitotic_radius_factor, np.where(dead, 0.7, 1.0))
                amp = s["expr_g"] * np.where(mitotic, cfg.mitotic_brightness, 1.0)
                hole = np.zeros_like(radius)
            else:
                radius = s["r_cell"] * np.where(mitotic | dead, 0.65, 1.0)
                amp = 0.5 * s["expr_m"] * np.where(mitotic, 2.0, 1.0)  # cytoplasm: dimmer per area than the nucleus
                hole = np.where(mitotic | dead, 0.0, s["r_nuc"] / px)  # no nucleus to exclude once it breaks down
            amp = amp * bleach * fade
            dz = z_um - (self._tilt[0] * s["x"] + self._tilt[1] * s["y"])
            sigma_um = np.hypot(cfg.psf_sigma_um, cfg.defocus_sigma_per_um * dz)
            sigma_px = np.minimum(sigma_um / px, cfg.max_defocus_sigma_px)
            rows = (s["y"] - ymin) / px - 0.5
            cols = (s["x"] - xmin) / px - 0.5
            renderer.draw(img, rows, cols, radius / px, amp, sigma_px, hole, 0.7, cfg.background)
        rate = cfg.gfp_rate_e_per_ms if gfp else cfg.mcherry_rate_e_per_ms
        renderer.expose(
            img,
            out,
            electrons_per_unit=rate * power / 100.0 * exposure if lit else 0.0,
            gain=cfg.gain_adu_per_e,
            read_noise=cfg.read_noise_adu,
            offset=cfg.offset_adu,
            max_adu=cfg.max_adu,
        )


def _empty_health(t: float) -> dict[str, float]:
    return {
        "n_cells": 0.0,
        "n_alive": 0.0,
        "n_arrested": 0.0,
        "n_dead": 0.0,
        "mean_dose": 0.0,
        "max_dose": 0.0,
        "n_divisions": 0.0,
        "fraction_healthy": 1.0,
        "sim_time_s": t,
        "n_tiles": 0.0,
    }
