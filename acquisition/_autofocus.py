"""Software autofocus: a z sweep that maximises the image's focus score, for microscopes with no autofocus device.

pymmcore-plus runs a plan's `autofocus_plan` through the core's hardware autofocus (`fullFocus`) and skips it,
with a warning, when there is none, as on the digital twin. `AutofocusEngine` runs those same events as an image-
based search instead: a coarse sweep around the current z, a fine sweep around the best coarse plane, and a
parabola through the best three fine planes. The z it finds becomes the position's correction, exactly as a
hardware autofocus offset would, so every later event at that position is imaged in focus.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymmcore_plus.mda import MDAEngine
from useq import HardwareAutofocus, MDAEvent

from acquisition._qc import focus_score

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus
    from pymmcore_plus.mda._protocol import PImagePayload

__all__ = ["AutofocusEngine", "AutofocusResult", "SoftwareAutofocus", "find_focus"]

log = logging.getLogger(__name__)


class SoftwareAutofocus(BaseModel):
    """How far and how finely to search; every plane searched is one exposure (light dose on the sample)."""

    model_config = ConfigDict(frozen=True)

    search_range_um: float = Field(default=12.0, gt=0, description="coarse sweep: +- this around the current z")
    coarse_step_um: float = Field(default=2.0, gt=0)
    fine_step_um: float = Field(default=0.5, gt=0)


@dataclass(frozen=True)
class AutofocusResult:
    p: int | None
    z_start_um: float
    z_best_um: float
    score: float
    n_images: int
    planes: list[tuple[float, float]] = field(repr=False)  # (z, score) for each plane imaged

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["planes"]
        return out


def _sweep(core: CMMCorePlus, stage: str, zs: Iterable[float], lo: float, hi: float) -> list[tuple[float, float]]:
    out = []
    for z in zs:
        if not lo <= z <= hi:
            continue
        core.setPosition(stage, float(z))
        core.waitForDevice(stage)
        core.snapImage()
        out.append((float(z), focus_score(np.asarray(core.getImage()))))
    return out


def _parabola_peak(points: list[tuple[float, float]]) -> float | None:
    """The vertex of the parabola through the best plane and its two neighbours, if it is a maximum."""
    if len(points) < 3:
        return None
    pts = sorted(points)
    i = max(range(len(pts)), key=lambda k: pts[k][1])
    if i in (0, len(pts) - 1):
        return None
    (z0, s0), (z1, s1), (z2, s2) = pts[i - 1], pts[i], pts[i + 1]
    denom = (z0 - z1) * (z0 - z2) * (z1 - z2)
    a = (z2 * (s1 - s0) + z1 * (s0 - s2) + z0 * (s2 - s1)) / denom
    b = (z2 * z2 * (s0 - s1) + z1 * z1 * (s2 - s0) + z0 * z0 * (s1 - s2)) / denom
    if a >= 0:
        return None
    return min(max(-b / (2 * a), z0), z2)


def find_focus(
    core: CMMCorePlus,
    *,
    stage: str | None = None,
    options: SoftwareAutofocus | None = None,
    limits: tuple[float, float] | None = None,
    p: int | None = None,
) -> AutofocusResult:
    """Search `stage` (default: the focus device) for the sharpest image; leaves the stage there."""
    opts = options or SoftwareAutofocus()
    stage = stage or core.getFocusDevice()
    if not stage:
        raise RuntimeError("software autofocus needs a focus stage")
    lo, hi = limits or (-np.inf, np.inf)
    z_start = float(core.getPosition(stage))
    n_coarse = round(opts.search_range_um / opts.coarse_step_um)
    coarse = _sweep(core, stage, (z_start + k * opts.coarse_step_um for k in range(-n_coarse, n_coarse + 1)), lo, hi)
    if not coarse:
        raise RuntimeError(f"software autofocus: no plane within the focus limits around z={z_start:g} µm")
    z_coarse = max(coarse, key=lambda zs: zs[1])[0]
    n_fine = round(opts.coarse_step_um / opts.fine_step_um)
    fine_zs = [z_coarse + k * opts.fine_step_um for k in range(-n_fine, n_fine + 1) if k]
    planes = [*coarse, *_sweep(core, stage, fine_zs, lo, hi)]
    near = [(z, s) for z, s in planes if abs(z - z_coarse) <= opts.coarse_step_um + 1e-9]
    best_z, best_score = max(near, key=lambda zs: zs[1])
    refined = _parabola_peak(near)
    z_best = refined if refined is not None else best_z
    core.setPosition(stage, float(z_best))
    core.waitForDevice(stage)
    return AutofocusResult(p, z_start, float(z_best), float(best_score), len(planes), planes)


class AutofocusEngine(MDAEngine):
    """pymmcore-plus's engine, with a software autofocus where the core has no autofocus device."""

    def __init__(
        self,
        mmc: CMMCorePlus,
        *,
        software: SoftwareAutofocus | None = None,
        limits: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mmc, **kwargs)
        self.software = software or SoftwareAutofocus()
        self.limits = limits
        self.results: list[AutofocusResult] = []

    def exec_event(self, event: MDAEvent) -> Iterable[PImagePayload | None]:
        action = getattr(event, "action", None)
        if isinstance(action, HardwareAutofocus) and not self.mmcore.getAutoFocusDevice():
            self._software_autofocus(event, action)
            return ()
        return super().exec_event(event)

    def _software_autofocus(self, event: MDAEvent, action: HardwareAutofocus) -> None:
        p = event.index.get("p")
        try:
            result = find_focus(
                self.mmcore, stage=action.autofocus_device_name, options=self.software, limits=self.limits, p=p
            )
        except RuntimeError as exc:
            log.warning("software autofocus failed: %s", exc)
            self._af_succeeded = False
            return
        self._af_succeeded = True
        # the same bookkeeping as a hardware autofocus: later events at this position add the correction
        self._z_correction[p] = self._z_correction.get(p, 0.0) + result.z_best_um - result.z_start_um
        self.results.append(result)
