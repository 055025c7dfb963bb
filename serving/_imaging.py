"""Feedback's computations, free of HTTP: the served mitosis detector, one model call per batch of frames,
and the policy that turns detections into the microscope's next actions.

The detector is the registry's production `mitosis-cnn`. Where none is registered, the classical detector of
`acquisition` stands in and every answer says so in its model name (`mitosis-detector (fallback)`): a farm
can use the remote policy before the first CNN is trained.

The policy is acquisition's `local` one (`MitosisPolicy`) run server-side: an empty field is skipped, an
over-bright one gets half the light (once per run), a dividing cell earns its position a burst of extra time
points (not again while that burst lasts). Its memory is per run, for the newest `_MAX_RUNS` runs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

import lake
import models
from serving._frames import Frame
from serving._schemas import Action, FrameDecision, FrameDetection, Revisit, SetLightPower, SkipPosition

if TYPE_CHECKING:
    from acquisition import DetectionLike

__all__ = [
    "FALLBACK_NAME",
    "DetectorState",
    "FeedbackPolicyState",
    "decide_batch",
    "detect_batch",
    "find_detector",
    "load_detector_state",
]

log = logging.getLogger(__name__)
FALLBACK_NAME = "mitosis-detector (fallback)"
_MAX_RUNS = 1024
_BURST, _BURST_INTERVAL_S = 4, 0.25
_MIN_POWER = 5.0


Detector = Callable[[npt.NDArray[Any]], Sequence["DetectionLike"]]  # a string: acquisition loads lazily


@dataclass(frozen=True)
class DetectorState:
    name: str
    version: str
    kind: str
    stage: str
    detector: Any = field(repr=False)  # an `ImagingMitosisDetector`, or the classical detector
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    note: str = ""

    @property
    def learned(self) -> bool:
        from models.imaging import ImagingMitosisDetector

        return isinstance(self.detector, ImagingMitosisDetector)


def find_detector(target: lake.Lake) -> models.ModelRecord | None:
    """The registry's production mitosis detector, or None (the classical fallback)."""
    from models.imaging import KIND, resolve_detector

    try:
        return resolve_detector(target, KIND, stage="production")
    except models.ModelNotFoundError:
        return None


def _classical() -> Detector:
    # An import of `acquisition` from serving (DESIGN.md lists lake and models only; see test_boundaries): its classical
    # detector is the documented stand-in when no imaging model is registered; loaded only then.
    from acquisition import detect_mitoses

    return detect_mitoses


def load_detector_state(record: models.ModelRecord | None) -> DetectorState:
    if record is None:
        return DetectorState(
            FALLBACK_NAME, "classical-1", "classical", "fallback", _classical(), note="no production mitosis-cnn"
        )
    from models._device import default_device
    from models.imaging import load_artifact

    det = load_artifact(record.artifact_uri, str(record.version), str(default_device()))
    return DetectorState(record.name, str(record.version), record.kind, record.stage, det)


# ------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Scored:
    detections: list[FrameDetection]
    event_score: float


def _served(d: DetectionLike) -> FrameDetection:
    return FrameDetection(y=float(d.y), x=float(d.x), score=float(d.score), area_px=int(d.area_px))


def detect_batch(state: DetectorState, images: list[npt.NDArray[Any]]) -> list[Scored]:
    if state.learned:
        return [
            Scored([_served(d) for d in found.detections], found.event_score)
            for found in state.detector.detect_batch(images)
        ]
    scored = []
    for img in images:
        dets = [_served(d) for d in state.detector(img)]
        scored.append(Scored(dets, max((d.score for d in dets), default=0.0)))
    return scored


# -------------------------------------------------------------------------------------------------- policy


@dataclass
class _RunMemory:
    bursting_until: dict[int, float] = field(default_factory=dict)
    power_set: bool = False


class FeedbackPolicyState:
    """Per-run memory of the policy; called from one thread (the feedback worker)."""

    def __init__(self, max_runs: int = _MAX_RUNS) -> None:
        self._runs: OrderedDict[str, _RunMemory] = OrderedDict()
        self.max_runs = max_runs

    def run(self, run_id: str) -> _RunMemory:
        mem = self._runs.pop(run_id, None) or _RunMemory()
        self._runs[run_id] = mem
        while len(self._runs) > self.max_runs:
            self._runs.popitem(last=False)
        return mem


def _actions(frame: Frame, scored: Scored, memory: _RunMemory) -> list[Action]:
    # serving's dependency on acquisition (see tests/test_boundaries.py): its pure image test, so that the served
    # policy and the in-process one judge a field alike; imported here, not at start, as it loads the package
    from acquisition import nuclei_above_noise

    img, meta = frame.image, frame.meta
    full = float(2**meta.bit_depth - 1)
    sample = img[::4, ::4]
    hi = float(np.percentile(sample, 99.5))
    lo = float(np.median(sample))
    if hi - lo < 0.01 * full and not nuclei_above_noise(img):
        return [SkipPosition(p=meta.p)]
    actions: list[Action] = []
    if not memory.power_set and meta.light_power and hi > 0.5 * full:
        power = max(_MIN_POWER, meta.light_power * 0.5)
        if power < meta.light_power:
            actions.append(SetLightPower(power=power))
            memory.power_set = True
    now = (meta.acquired_at or datetime.now(UTC)).timestamp()
    if scored.detections and memory.bursting_until.get(meta.p, 0.0) < now:
        memory.bursting_until[meta.p] = now + _BURST * _BURST_INTERVAL_S
        actions.append(Revisit(p=meta.p, repeats=_BURST, interval_s=_BURST_INTERVAL_S))
    return actions


def decide_batch(state: DetectorState, policy: FeedbackPolicyState, frames: Sequence[Frame]) -> list[FrameDecision]:
    """One model call for the whole batch, then the policy frame by frame (in arrival order)."""
    scored = detect_batch(state, [f.image for f in frames])
    done = time.perf_counter()
    return [
        FrameDecision(
            run_id=f.meta.run_id,
            frame_id=f.meta.frame_id,
            p=f.meta.p,
            model=state.name,
            model_version=state.version,
            event_score=s.event_score,
            detections=s.detections,
            actions=_actions(f, s, policy.run(f.meta.run_id)),
            server_ms=round((done - f.received) * 1000, 3),
            batch_size=len(frames),
        )
        for f, s in zip(frames, scored, strict=True)
    ]
