"""The cells of one square tile of the plate, simulated event by event.

Each tile owns its cells, its random stream (seeded by the twin's seed and the tile index) and its event
history, so a tile evolves the same way whenever and however often it is asked: tiles can be generated
lazily, in any order, and caught up to the present in one go or in many small steps.

Between events a cell's position is an analytic function of time (a few slow harmonics around its
birthplace), so asking where cells are costs nothing per elapsed second. Events are mitosis starts,
divisions, and the arrests and deaths that light dose causes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from acquisition.twin._config import REFERENCE_FIELD_UM, TwinConfig

__all__ = ["DEAD", "INTERPHASE", "MITOSIS", "Tile", "tile_range"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

INTERPHASE, MITOSIS, DEAD = 0, 1, 2
_TILE_OFFSET = 2**11  # tile indices shifted non-negative, for seeds and ids
_ID_TILE_SHIFT_X, _ID_TILE_SHIFT_Y = 44, 24  # id = tile x | tile y | 24-bit local counter
_LOCAL_ID_LIMIT = 2**24
_N_HARMONICS = 4  # wandering: 2 harmonics for x, then 2 for y


def tile_range(lo: float, hi: float, size: float) -> range:
    """Indices of the tiles that overlap [lo, hi] along one axis."""
    return range(math.floor(lo / size), math.floor(hi / size) + 1)


@dataclass(slots=True)
class EventRecord:
    """A mutable event: a division gets its end once the daughters appear."""

    kind: str
    cell_id: int
    parent_id: int | None
    t: float
    x: float
    y: float
    dose: float
    end_t: float | None = None
    daughters: tuple[int, int] | None = None


class _Cells:
    """Struct of arrays with amortised appends; rows are never reordered except by `compact`."""

    _FLOAT = (
        "x0",
        "y0",
        "ox",
        "oy",
        "t_anchor",
        "birth",
        "cycle",
        "next_t",
        "r_nuc",
        "r_cell",
        "expr_g",
        "expr_m",
        "dose",
        "t_death",
    )
    _WANDER = ("amp", "freq", "phs", "sin_phs")

    def __init__(self) -> None:
        self.n = 0
        cap = 64
        self.x0 = np.zeros(cap)  # home: where the cell wanders around
        self.y0 = np.zeros(cap)
        self.ox = np.zeros(cap)  # offset from home at birth, relaxing away (no jump at division)
        self.oy = np.zeros(cap)
        self.t_anchor = np.zeros(cap)
        self.birth = np.zeros(cap)
        self.cycle = np.zeros(cap)
        self.next_t = np.zeros(cap)
        self.r_nuc = np.zeros(cap)
        self.r_cell = np.zeros(cap)
        self.expr_g = np.zeros(cap)
        self.expr_m = np.zeros(cap)
        self.dose = np.zeros(cap)
        self.t_death = np.zeros(cap)
        self.amp = np.zeros((cap, _N_HARMONICS))
        self.freq = np.zeros((cap, _N_HARMONICS))
        self.phs = np.zeros((cap, _N_HARMONICS))
        self.sin_phs = np.zeros((cap, _N_HARMONICS))
        self.id = np.zeros(cap, dtype=np.int64)
        self.parent = np.zeros(cap, dtype=np.int64)
        self.phase = np.zeros(cap, dtype=np.int8)
        self.event = np.zeros(cap, dtype=np.int64)  # index of the open division record, -1 when none
        self.arrested = np.zeros(cap, dtype=bool)
        self.present = np.zeros(cap, dtype=bool)

    def _names(self) -> tuple[str, ...]:
        return (*self._FLOAT, *self._WANDER, "id", "parent", "phase", "event", "arrested", "present")

    def append(self, rows: dict[str, Any], count: int) -> None:
        cap = self.x0.shape[0]
        if self.n + count > cap:
            new_cap = max(2 * cap, self.n + count)
            for name in self._names():
                old = getattr(self, name)
                grown = np.zeros((new_cap, *old.shape[1:]), dtype=old.dtype)
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        sl = slice(self.n, self.n + count)
        for name, value in rows.items():
            getattr(self, name)[sl] = value
        self.n += count

    def compact(self) -> None:
        """Drop the rows of cells no longer on the plate (divided mothers, detached cells)."""
        keep = np.flatnonzero(self.present[: self.n])
        for name in self._names():
            arr = getattr(self, name)
            arr[: keep.size] = arr[keep]
        self.n = int(keep.size)

    def position(self, i: int, t: float, relax_s: float) -> tuple[float, float]:
        """`positions` for one living cell, in plain floats (the event loop calls it per event)."""
        tau = t - float(self.t_anchor[i])
        amp, freq, phs, sph = (
            self.amp[i].tolist(),
            self.freq[i].tolist(),
            self.phs[i].tolist(),
            self.sin_phs[i].tolist(),
        )
        d = [a * (math.sin(w * tau + p) - s) for a, w, p, s in zip(amp, freq, phs, sph, strict=True)]
        k = math.exp(-tau / relax_s)
        return (
            float(self.x0[i]) + float(self.ox[i]) * k + d[0] + d[1],
            float(self.y0[i]) + float(self.oy[i]) * k + d[2] + d[3],
        )

    def positions(self, idx: npt.NDArray[np.intp] | slice, t: float, relax_s: float) -> tuple[F64, F64]:
        """Where cells `idx` are at sim time `t` (dead cells stay where they died)."""
        tau = np.where(self.phase[idx] == DEAD, self.t_death[idx], t) - self.t_anchor[idx]
        d = self.amp[idx] * (np.sin(self.freq[idx] * tau[:, None] + self.phs[idx]) - self.sin_phs[idx])
        k = np.exp(-tau / relax_s)
        return (
            self.x0[idx] + self.ox[idx] * k + d[:, 0] + d[:, 1],
            self.y0[idx] + self.oy[idx] * k + d[:, 2] + d[:, 3],
        )


class Tile:
    """The cells whose birthplace lies in one `tile_um` square, and everything that happened to them."""

    def __init__(self, ix: int, iy: int, config: TwinConfig) -> None:
        if not (abs(ix) < _TILE_OFFSET and abs(iy) < _TILE_OFFSET):
            raise ValueError(f"tile ({ix}, {iy}) is too far from the origin for the twin")
        self.ix, self.iy = ix, iy
        self.cfg = config
        self.rng = np.random.default_rng(
            np.random.SeedSequence([config.seed, ix + _TILE_OFFSET, iy + _TILE_OFFSET, 0x7153])
        )
        self.cells = _Cells()
        self.events: list[EventRecord] = []
        self.t = 0.0
        self._next_local = 0
        self._absent = 0
        expected = config.cells_per_field * (config.tile_um / REFERENCE_FIELD_UM) ** 2
        self._populate(int(self.rng.poisson(expected)))
        self.capacity = max(round(expected * config.max_density_factor), self.n_alive())

    # -------------------------------------------------------------- creation

    def _new_ids(self, count: int) -> I64:
        if self._next_local + count >= _LOCAL_ID_LIMIT:
            raise RuntimeError(f"tile ({self.ix}, {self.iy}) ran out of cell ids")
        base = ((self.ix + _TILE_OFFSET) << _ID_TILE_SHIFT_X) | ((self.iy + _TILE_OFFSET) << _ID_TILE_SHIFT_Y)
        ids = base + np.arange(self._next_local, self._next_local + count, dtype=np.int64)
        self._next_local += count
        return ids

    def _draw_cycles(self, count: int) -> F64:
        cfg = self.cfg
        s = math.sqrt(math.log1p(cfg.cycle_cv**2))
        cycles = cfg.mean_cycle_s * np.exp(self.rng.normal(-s * s / 2, s, count))
        # a cell needs some interphase before its next mitosis
        return np.maximum(cycles, 1.5 * cfg.mitosis_duration_s)

    def _draw_wander(self, count: int) -> dict[str, F64]:
        cfg = self.cfg
        amp = self.rng.normal(0.0, cfg.motility_um / math.sqrt(2), (count, _N_HARMONICS))
        freq = 2 * math.pi / (cfg.motility_period_s * self.rng.uniform(0.5, 1.5, (count, _N_HARMONICS)))
        phs = self.rng.uniform(0.0, 2 * math.pi, (count, _N_HARMONICS))
        return {"amp": amp, "freq": freq, "phs": phs, "sin_phs": np.sin(phs)}

    def _place(self, count: int) -> tuple[F64, F64]:
        """Birthplaces with a minimum spacing: nuclei in a monolayer do not pile up."""
        size = self.cfg.tile_um
        # a plate denser than the spacing allows packs tighter rather than looping for ever
        spacing = min(2.4 * self.cfg.nucleus_radius_um, 0.7 * size / math.sqrt(max(count, 1)))
        pts = np.empty((count, 2))
        k = 0
        for _ in range(50):
            if k == count:
                break
            cand = self.rng.uniform(0.0, size, (4 * count + 8, 2))
            for p in cand:
                if k == count:
                    break
                if k == 0 or np.min(np.sum((pts[:k] - p) ** 2, axis=1)) >= spacing * spacing:
                    pts[k] = p
                    k += 1
        if k < count:  # an over-full tile: the rest go anywhere
            pts[k:] = self.rng.uniform(0.0, size, (count - k, 2))
        return pts[:, 0] + self.ix * size, pts[:, 1] + self.iy * size

    def _reflect(self, v: F64, index: int) -> F64:
        """Fold coordinates back into this tile's [lo, hi) along one axis."""
        lo = index * self.cfg.tile_um
        span = self.cfg.tile_um
        r = np.mod(v - lo, 2 * span)
        return lo + np.where(r < span, r, 2 * span - r)

    def _populate(self, count: int) -> None:
        if count == 0:
            return
        cfg = self.cfg
        x0, y0 = self._place(count)
        cycle = self._draw_cycles(count)
        birth = -self.rng.uniform(0.0, 1.0, count) * cycle  # founders are caught mid-cycle
        mitosis_start = birth + cycle - cfg.mitosis_duration_s
        in_mitosis = mitosis_start <= 0.0
        rows: dict[str, Any] = {
            "x0": x0,
            "y0": y0,
            "ox": 0.0,
            "oy": 0.0,
            "t_anchor": 0.0,
            "birth": birth,
            "cycle": cycle,
            "next_t": np.where(in_mitosis, birth + cycle, mitosis_start),
            "r_nuc": cfg.nucleus_radius_um * np.exp(self.rng.normal(0.0, 0.08, count)),
            "r_cell": cfg.cell_radius_um * np.exp(self.rng.normal(0.0, 0.1, count)),
            "expr_g": np.exp(self.rng.normal(0.0, cfg.expression_cv, count)),
            "expr_m": np.exp(self.rng.normal(0.0, cfg.expression_cv, count)),
            "dose": 0.0,
            "t_death": np.nan,
            **self._draw_wander(count),
            "id": self._new_ids(count),
            "parent": -1,
            "phase": np.where(in_mitosis, MITOSIS, INTERPHASE),
            "event": -1,
            "arrested": False,
            "present": True,
        }
        self.cells.append(rows, count)
        c = self.cells
        for i in np.flatnonzero(in_mitosis):
            c.event[i] = len(self.events)
            self.events.append(
                EventRecord("division", int(c.id[i]), None, float(mitosis_start[i]), float(x0[i]), float(y0[i]), 0.0)
            )

    # -------------------------------------------------------------- evolution

    def advance(self, t: float) -> None:
        """Run every event up to sim time `t`, in time order."""
        c = self.cells
        while c.n:
            nt = c.next_t[: c.n]
            i = int(np.argmin(nt))
            te = float(nt[i])
            if te > t:
                break
            if c.phase[i] == INTERPHASE:
                self._start_mitosis(i, te)
            else:
                self._divide(i, te)
        self.t = max(self.t, t)

    def _start_mitosis(self, i: int, te: float) -> None:
        c = self.cells
        x, y = c.position(i, te, self.cfg.motility_period_s)
        c.phase[i] = MITOSIS
        c.next_t[i] = te + self.cfg.mitosis_duration_s
        c.event[i] = len(self.events)
        parent = int(c.parent[i])
        self.events.append(
            EventRecord("division", int(c.id[i]), parent if parent >= 0 else None, te, x, y, float(c.dose[i]))
        )

    def _divide(self, i: int, te: float) -> None:
        c = self.cells
        cfg = self.cfg
        xm, ym = c.position(i, te, self.cfg.motility_period_s)
        # all of this division's randomness in two draws (the catch-up of a new tile runs many of these)
        z = self.rng.standard_normal(2 * (5 + _N_HARMONICS))
        u = self.rng.random(1 + 4 * _N_HARMONICS)
        theta = 2 * math.pi * u[0]
        half = 0.5 * 2.2 * 0.8 * float(c.r_nuc[i])  # daughters' nuclei side by side, just apart
        dx, dy = half * math.cos(theta), half * math.sin(theta)
        spread = 1.7  # ... then they glide apart, to homes at the usual spacing of nuclei
        s = math.sqrt(math.log1p(cfg.cycle_cv**2))
        cycle = np.maximum(cfg.mean_cycle_s * np.exp(s * z[0:2] - s * s / 2), 1.5 * cfg.mitosis_duration_s)
        arrested = bool(c.arrested[i])
        ids = self._new_ids(2)
        periods = cfg.motility_period_s * (0.5 + u[1 : 1 + 2 * _N_HARMONICS].reshape(2, _N_HARMONICS))
        freq = 2 * math.pi / periods
        phs = 2 * math.pi * u[1 + 2 * _N_HARMONICS : 1 + 4 * _N_HARMONICS].reshape(2, _N_HARMONICS)
        # Daughters are born side by side where the mother divided and drift apart (over
        # `motility_period_s`) to homes they wander around. Lineages random-walk over the generations; a
        # home that would leave the tile is reflected back in (a reflected walk keeps the density uniform),
        # so no cell strays beyond the margins that the renderer gathers tiles with.
        bx, by = np.array([xm + dx, xm - dx]), np.array([ym + dy, ym - dy])
        hx = self._reflect(np.array([xm + spread * dx, xm - spread * dx]), self.ix)
        hy = self._reflect(np.array([ym + spread * dy, ym - spread * dy]), self.iy)
        rows: dict[str, Any] = {
            "x0": hx,
            "y0": hy,
            "ox": bx - hx,
            "oy": by - hy,
            "t_anchor": te,
            "birth": te,
            "cycle": cycle,
            "next_t": np.inf if arrested else te + cycle - cfg.mitosis_duration_s,
            "r_nuc": c.r_nuc[i] * np.exp(0.03 * z[2:4]),
            "r_cell": c.r_cell[i] * np.exp(0.03 * z[4:6]),
            "expr_g": c.expr_g[i] * np.exp(0.05 * z[6:8]),
            "expr_m": c.expr_m[i] * np.exp(0.05 * z[8:10]),
            "dose": c.dose[i],  # daughters inherit the mother's bleached, damaged contents
            "t_death": np.nan,
            "amp": cfg.motility_um / math.sqrt(2) * z[10:].reshape(2, _N_HARMONICS),
            "freq": freq,
            "phs": phs,
            "sin_phs": np.sin(phs),
            "id": ids,
            "parent": c.id[i],
            "phase": INTERPHASE,
            "event": -1,
            "arrested": arrested,
            "present": True,
        }
        ev = int(c.event[i])
        c.present[i] = False
        c.next_t[i] = np.inf
        c.event[i] = -1
        self._absent += 1
        c.append(rows, 2)
        if ev >= 0:
            rec = self.events[ev]
            rec.end_t = te
            rec.daughters = (int(ids[0]), int(ids[1]))
        if self.n_alive() > self.capacity:
            # Crowding: a confluent monolayer sheds cells. The dividing cell pushes off its nearest
            # interphase neighbour (not a newborn), so the local density, and with it the division rate,
            # stays steady over long runs. Not a death event: the cell is simply gone.
            cand = np.flatnonzero(c.present[: c.n - 2] & (c.phase[: c.n - 2] == INTERPHASE))
            if cand.size:
                # nearest by home, which is within a few µm of the cell and much cheaper than its position
                j = int(cand[int(np.argmin((c.x0[cand] - xm) ** 2 + (c.y0[cand] - ym) ** 2))])
                c.present[j] = False
                c.next_t[j] = np.inf
                self._absent += 1
        if self._absent > max(32, c.n // 2):
            self._reindex_after_compact()

    def _reindex_after_compact(self) -> None:
        self.cells.compact()
        self._absent = 0

    # -------------------------------------------------------------- light

    def illuminate(self, xmin: float, xmax: float, ymin: float, ymax: float, dose: float, t: float) -> None:
        """Add `dose` to every cell whose centre lies in the rectangle; record arrests and deaths."""
        c = self.cells
        if c.n == 0 or dose <= 0:
            return
        idx = np.flatnonzero(c.present[: c.n])
        x, y = c.positions(idx, t, self.cfg.motility_period_s)
        hit = (x >= xmin) & (x < xmax) & (y >= ymin) & (y < ymax)
        idx, x, y = idx[hit], x[hit], y[hit]
        if idx.size == 0:
            return
        c.dose[idx] += dose
        cfg = self.cfg
        alive = c.phase[idx] != DEAD
        dies = alive & (c.dose[idx] >= cfg.death_dose)
        arrests = alive & ~dies & ~c.arrested[idx] & (c.dose[idx] >= cfg.arrest_dose)
        for k in np.flatnonzero(dies | arrests):
            i = int(idx[k])
            parent = int(c.parent[i])
            kind = "death" if dies[k] else "arrest"
            self.events.append(
                EventRecord(
                    kind, int(c.id[i]), parent if parent >= 0 else None, t, float(x[k]), float(y[k]), float(c.dose[i])
                )
            )
            c.arrested[i] = True
            if kind == "death":
                # a cell dying in mitosis never divides: its division record stays open
                c.phase[i] = DEAD
                c.t_death[i] = t
                c.next_t[i] = np.inf
                c.event[i] = -1
            elif c.phase[i] == INTERPHASE:
                c.next_t[i] = np.inf  # a mitosis already under way completes; the daughters inherit the arrest

    # -------------------------------------------------------------- queries

    def n_alive(self) -> int:
        c = self.cells
        return int(np.count_nonzero(c.present[: c.n] & (c.phase[: c.n] != DEAD)))

    def snapshot(self, t: float) -> dict[str, Any]:
        """Arrays describing every cell on the plate at sim time `t` (the tile must be advanced to `t`)."""
        c = self.cells
        idx = np.flatnonzero(c.present[: c.n])
        x, y = c.positions(idx, t, self.cfg.motility_period_s)
        age = np.clip((t - c.birth[idx]) / c.cycle[idx], 0.0, 1.0)
        growth = 0.8 + 0.2 * age  # daughters start at ~2^(-1/3) of the mother's size and grow back
        return {
            "ids": c.id[idx],
            "parent": c.parent[idx],
            "x": x,
            "y": y,
            "phase": c.phase[idx],
            "arrested": c.arrested[idx],
            "dose": c.dose[idx],
            "r_nuc": c.r_nuc[idx] * growth,
            "r_cell": c.r_cell[idx] * growth,
            "expr_g": c.expr_g[idx],
            "expr_m": c.expr_m[idx],
            "t_death": c.t_death[idx],
        }
