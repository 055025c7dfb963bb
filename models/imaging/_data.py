"""Labelled frames from a simulated plate: images and the centroids of the cells in mitosis.

The plates come from the digital twin (`acquisition.twin.TwinSample`), but `models` does not import
`acquisition` (DESIGN.md: models import `lake` only): the caller hands in a `PlateFactory` that makes one
plate per seed, and this module only asks it for what the `Plate` protocol names. The composition roots that
may import both packages (`python -m models.imaging`, the `cellfarm` command line, tests) pass the twin.

Centroids are (row, col) pixel coordinates in the frame. They include mitotic cells whose centre lies just
outside the frame (within `MARGIN_UM`), which show partly at the edge: `evaluate` treats those as "don't care"
(finding one is not a false positive, missing one is not a false negative) and training teaches the net to
mark them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["MARGIN_UM", "LabelledFrames", "Plate", "PlateFactory", "make_training_frames", "render_frames"]

MARGIN_UM = 10.0  # a mitotic nucleus (~3 µm radius) centred this far outside the frame can still show
_PLATE_UM = 40_000.0  # fields are drawn from [-_PLATE_UM, _PLATE_UM]^2, inside the twin's default stage limits
_FIELD_SPACING_UM = 1_200.0  # fields of one data set lie at least this far apart: no cell is imaged twice


class Plate(Protocol):
    """A simulated plate of cells on a sim clock (what `acquisition.twin.TwinSample` is), as training sees it."""

    def now(self) -> float:
        """Sim seconds since the plate was made."""
        ...

    def advance(self, seconds: float) -> None:
        """Let `seconds` of sim time pass."""
        ...

    def focal_plane_um(self, x_um: float, y_um: float) -> float:
        """The focus at which the cells at (x, y) are sharp."""
        ...

    def cells_in_view(self, x_um: float, y_um: float, *, margin_um: float = ...) -> Mapping[str, npt.NDArray[Any]]:
        """Ground truth of the field centred on (x, y): at least ``row``, ``col`` (pixels) and ``in_mitosis``."""
        ...

    def render(
        self,
        *,
        x_um: float,
        y_um: float,
        z_um: float = ...,
        exposure_ms: float | None = ...,
        power_pct: float = ...,
        light_on: bool = ...,
    ) -> tuple[npt.NDArray[np.uint16], Any]:
        """A nuclear-channel frame of that field (and anything else, ignored)."""
        ...


# (plate seed, frame size in pixels) -> a fresh, frozen-clock plate whose camera makes size x size frames.
PlateFactory: TypeAlias = Callable[[int, int], Plate]


@dataclass(frozen=True)
class LabelledFrames:
    """Frames (N, H, W) uint16, per-frame mitotic centroids ((k, 2) float64, row/col) and imaging settings."""

    images: npt.NDArray[np.uint16]
    centroids: list[npt.NDArray[np.float64]]
    exposure_ms: npt.NDArray[np.float64]
    power_pct: npt.NDArray[np.float64]
    defocus_um: npt.NDArray[np.float64]
    twin_seed: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_mitoses(self) -> int:
        """Mitotic cells whose centre lies inside a frame (the ones recall counts)."""
        h, w = self.images.shape[1:]
        return sum(int(np.count_nonzero(_inside(c, h, w))) for c in self.centroids)


def _inside(c: npt.NDArray[np.float64], h: int, w: int) -> npt.NDArray[np.bool_]:
    return (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)


def _mitotic_centroids(sample: Plate, x_um: float, y_um: float) -> npt.NDArray[np.float64]:
    truth = sample.cells_in_view(x_um, y_um, margin_um=MARGIN_UM)
    m = truth["in_mitosis"]
    return np.stack([truth["row"][m], truth["col"][m]], axis=1).astype(np.float64).reshape(-1, 2)


def _fields(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """`n` field centres on the plate, at least `_FIELD_SPACING_UM` apart (each field is lit once)."""
    pts = np.empty((n, 2))
    k = 0
    while k < n:
        cand = rng.uniform(-_PLATE_UM, _PLATE_UM, 2)
        if k == 0 or float(np.min(np.max(np.abs(pts[:k] - cand), axis=1))) >= _FIELD_SPACING_UM:
            pts[k] = cand
            k += 1
    return pts


def _pack(
    images: list[npt.NDArray[np.uint16]],
    centroids: list[npt.NDArray[np.float64]],
    settings: list[tuple[float, float, float, int]],
    size: int,
) -> LabelledFrames:
    s = np.array(settings, dtype=np.float64).reshape(-1, 4)
    return LabelledFrames(
        images=np.stack(images) if images else np.zeros((0, size, size), np.uint16),
        centroids=centroids,
        exposure_ms=s[:, 0].copy(),
        power_pct=s[:, 1].copy(),
        defocus_um=s[:, 2].copy(),
        twin_seed=s[:, 3].astype(np.int64),
    )


def render_frames(
    plates: PlateFactory,
    *,
    twin_seed: int,
    n_frames: int,
    exposure_ms: float = 50.0,
    power_pct: float = 50.0,
    defocus_um: float = 0.0,
    sim_time_s: float = 6_000.0,
    size: int = 512,
) -> LabelledFrames:
    """`n_frames` distinct fields of the plate `plates(twin_seed, size)` at one sim time and imaging settings.

    For evaluation: the same arguments give the same frames (fields are drawn from `twin_seed`), so two
    detectors can be scored on identical data, and settings can be compared field by field.
    """
    sample = plates(twin_seed, size)
    sample.advance(sim_time_s)
    rng = np.random.default_rng(np.random.SeedSequence([twin_seed, 0x5EED]))
    images, centroids, settings = [], [], []
    for x, y in _fields(rng, n_frames):
        centroids.append(_mitotic_centroids(sample, x, y))
        img, _ = sample.render(
            x_um=x, y_um=y, z_um=sample.focal_plane_um(x, y) + defocus_um, exposure_ms=exposure_ms, power_pct=power_pct
        )
        images.append(img.copy())
        settings.append((exposure_ms, power_pct, defocus_um, twin_seed))
    return _pack(images, centroids, settings, size)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def make_training_frames(
    plates: PlateFactory,
    n_frames: int,
    *,
    twin_seeds: Sequence[int],
    seed: int = 0,
    size: int = 512,
    light_dose: tuple[float, float] = (2.0, 30_000.0),
    max_exposure_ms: float = 500.0,
    max_defocus_um: float = 10.0,
    sim_time_s: tuple[float, float] = (2_000.0, 40_000.0),
    dark_fraction: float = 0.05,
) -> LabelledFrames:
    """Frames with randomised imaging, spread over the plates `plates(seed, size)` of `twin_seeds`.

    Each frame draws its own light dose (power % x exposure ms, log-uniform in `light_dose`: from a barely
    visible frame, about one photo-electron per pixel of an interphase nucleus, to one where even interphase
    nuclei clip at full scale), split log-uniformly into a light power (2-100 %) and an exposure (at most
    `max_exposure_ms`); its defocus (half of the frames within 1 µm of focus, the rest up to `max_defocus_um`
    away); and a field on one of the plates, at a sim time drawn from `sim_time_s` (young, sparse plates to
    crowded ones). A `dark_fraction` of the frames are taken with the light off (camera noise only, nothing
    to see): a blank field must not look like one full of dim mitoses. Deterministic in `seed`.
    """
    if not twin_seeds:
        raise ValueError("make_training_frames needs at least one twin seed")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1E]))
    seed_of = [int(twin_seeds[k % len(twin_seeds)]) for k in range(n_frames)]
    times = rng.uniform(*sim_time_s, n_frames)
    fields = _fields(rng, n_frames)
    images: list[npt.NDArray[np.uint16]] = []
    centroids: list[npt.NDArray[np.float64]] = []
    settings: list[tuple[float, float, float, int]] = []
    for tw in dict.fromkeys(seed_of):
        sample = plates(tw, size)
        mine = [k for k in range(n_frames) if seed_of[k] == tw]
        for k in sorted(mine, key=lambda k: times[k]):  # a plate's clock only runs forward
            sample.advance(max(0.0, float(times[k]) - sample.now()))
            x, y = float(fields[k, 0]), float(fields[k, 1])
            dose = _log_uniform(rng, *light_dose)
            lo = min(max(2.0, dose / max_exposure_ms), 100.0)
            power = _log_uniform(rng, lo, max(lo, min(100.0, dose)))
            exposure = dose / power
            near = rng.random() < 0.5
            dz = float(rng.uniform(-1.0, 1.0) if near else rng.uniform(-max_defocus_um, max_defocus_um))
            lit = rng.random() >= dark_fraction
            centroids.append(_mitotic_centroids(sample, x, y) if lit else np.zeros((0, 2)))
            img, _ = sample.render(
                x_um=x,
                y_um=y,
                z_um=sample.focal_plane_um(x, y) + dz,
                exposure_ms=exposure,
                power_pct=power,
                light_on=lit,
            )
            images.append(img.copy())
            settings.append((exposure, power if lit else 0.0, dz, tw))
    return _pack(images, centroids, settings, size)
