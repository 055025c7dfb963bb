"""Image formation for the twin's camera: blurred blobs drawn locally, then photons, noise and the ADC.

Speed matters (one render per snap on the acquisition thread), so:
- each cell is a small cached stamp (a soft disk blurred by its defocus) composited into its own patch,
  never a full-frame convolution;
- noise is one Gaussian draw per pixel taken from a seeded bank made once per frame size (a random window
  and sign per frame), with shot and read noise combined into one standard deviation;
- all full-frame arithmetic runs in place on float32 scratch buffers.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import erfc

__all__ = ["FrameRenderer"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_MAX_STAMPS = 1024


def _quantise_sigma(sigma: float) -> float:
    # fine steps where blur changes the look, coarse ones where everything is a haze
    if sigma < 2.0:
        return max(0.5, round(sigma * 4) / 4)
    if sigma < 6.0:
        return round(sigma * 2) / 2
    return float(round(sigma))


class FrameRenderer:
    """Turns per-cell blobs into a camera frame; owns the stamp cache, the noise bank and scratch buffers."""

    def __init__(self, seed: int, *, vignetting: float) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA3E]))
        self._vignetting = vignetting
        self._stamps: dict[tuple[float, float], F32] = {}
        self._bank: F32 | None = None
        self._scratch: dict[tuple[int, int], tuple[F32, F32]] = {}
        self._flat: dict[tuple[int, int], F32] = {}
        self._flat_scaled: tuple[tuple[int, int], float, F32] | None = None

    # -------------------------------------------------------------- blobs

    def stamp(self, radius_px: float, sigma_px: float) -> F32:
        """A disk of `radius_px` blurred by `sigma_px`, scaled so its sum is the disk's area.

        In focus the plateau is ~1; defocus spreads the same photons wider and lowers the peak.
        """
        key = (max(0.5, round(radius_px * 4) / 4), _quantise_sigma(sigma_px))
        st = self._stamps.get(key)
        if st is None:
            if len(self._stamps) >= _MAX_STAMPS:
                self._stamps.clear()
            r, s = key
            half = math.ceil(r + 3 * s) + 1
            ax = np.arange(-half, half + 1, dtype=np.float64)
            dist = np.hypot(ax[:, None], ax[None, :])
            f = 0.5 * erfc((dist - r) / (math.sqrt(2.0) * s))
            f *= math.pi * r * r / float(f.sum())
            st = f.astype(np.float32)
            self._stamps[key] = st
        return st

    @staticmethod
    def _patch(
        img: F32, st: F32, row: int, col: int
    ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | tuple[None, None]:
        """Matching slices of the image and of a stamp centred at (row, col); None if fully outside."""
        h = st.shape[0] // 2
        r0, c0 = row - h, col - h
        r1, c1 = r0 + st.shape[0], c0 + st.shape[1]
        H, W = img.shape
        if r1 <= 0 or c1 <= 0 or r0 >= H or c0 >= W:
            return None, None
        ir0, ic0, ir1, ic1 = max(r0, 0), max(c0, 0), min(r1, H), min(c1, W)
        return (slice(ir0, ir1), slice(ic0, ic1)), (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))

    def draw(
        self,
        img: F32,
        rows: F64,
        cols: F64,
        radius_px: F64,
        amp: F64,
        sigma_px: F64,
        hole_radius_px: F64,
        hole_depth: float,
        background: float,
    ) -> None:
        """Composite blobs over a frame filled with `background`.

        Blobs are combined with max rather than summed: cells in a monolayer do not stack, and summing two
        touching nuclei would fake the bright, condensed look of mitosis. `hole_radius_px` > 0 carves a dimmer
        nucleus out of a cytoplasmic blob (the cytoplasmic marker is excluded from the nucleus).
        """
        ri = np.rint(rows).astype(np.int64)
        ci = np.rint(cols).astype(np.int64)
        for k in range(ri.size):
            a = float(amp[k])
            if a <= 1e-3:
                continue
            st = self.stamp(float(radius_px[k]), float(sigma_px[k]))
            if hole_radius_px[k] > 0:
                hole = self.stamp(float(hole_radius_px[k]), float(sigma_px[k]))
                d = (st.shape[0] - hole.shape[0]) // 2
                if d >= 0:
                    st = st.copy()
                    st[d : d + hole.shape[0], d : d + hole.shape[1]] -= hole_depth * hole
            dst, src = self._patch(img, st, int(ri[k]), int(ci[k]))
            if dst is None or src is None:
                continue
            patch = img[dst]
            np.maximum(patch, st[src] * a + background, out=patch)

    # -------------------------------------------------------------- camera

    def _buffers(self, shape: tuple[int, int]) -> tuple[F32, F32]:
        bufs = self._scratch.get(shape)
        if bufs is None:
            self._scratch.clear()  # one camera size at a time is the usual case; keep memory bounded
            bufs = (np.empty(shape, np.float32), np.empty(shape, np.float32))
            self._scratch[shape] = bufs
        return bufs

    def _flat_field(self, shape: tuple[int, int], scale: float) -> F32:
        """Illumination fall-off towards the corners, times `scale` (cached: scale rarely changes)."""
        cached = self._flat_scaled
        if cached is not None and cached[0] == shape and cached[1] == scale:
            return cached[2]
        flat = self._flat.get(shape)
        if flat is None:
            h, w = shape
            yy = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / (h / 2)
            xx = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / (w / 2)
            r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) / 2
            flat = (1.0 - self._vignetting * r2).astype(np.float32)
            self._flat[shape] = flat
        scaled = (flat * np.float32(scale)).astype(np.float32)
        self._flat_scaled = (shape, scale, scaled)
        return scaled

    def _noise(self, n: int) -> tuple[F32, bool]:
        """A window of `n` standard normal draws from the bank, and whether to flip its sign."""
        if self._bank is None or self._bank.size < 2 * n:
            self._bank = self._rng.standard_normal(2 * n, dtype=np.float32)
        start = int(self._rng.integers(0, self._bank.size - n + 1))
        return self._bank[start : start + n], bool(self._rng.integers(2))

    def begin(self, shape: tuple[int, int], background: float) -> F32:
        """The scratch frame, filled with the relative background level, to `draw` into."""
        img, _ = self._buffers(shape)
        img.fill(background)
        return img

    def expose(
        self,
        img: F32,
        out: npt.NDArray[np.uint16],
        *,
        electrons_per_unit: float,
        gain: float,
        read_noise: float,
        offset: float,
        max_adu: int,
    ) -> None:
        """Photons -> electrons -> ADU into `out`: flat field, shot + read noise, offset, clipping.

        `img` is in units of an interphase nucleus' brightness; `electrons_per_unit` folds in the channel's
        photon rate, the light power and the exposure time (0 for a dark frame).
        """
        shape = (img.shape[0], img.shape[1])
        _, var = self._buffers(shape)
        if electrons_per_unit > 0:
            np.multiply(img, self._flat_field(shape, electrons_per_unit * gain), out=img)
        else:
            img.fill(0.0)
        # img is now the mean signal in ADU; its shot-noise variance in ADU^2 is mean * gain
        np.multiply(img, np.float32(gain), out=var)
        var += np.float32(read_noise * read_noise)
        np.sqrt(var, out=var)
        z, flip = self._noise(img.size)
        var *= z.reshape(img.shape)
        if flip:
            img -= var
        else:
            img += var
        img += np.float32(offset + 0.5)  # + 0.5: the cast below truncates
        np.clip(img, 0.0, float(max_adu), out=img)
        np.copyto(out, img, casting="unsafe")
