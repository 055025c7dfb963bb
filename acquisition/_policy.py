"""Feedback policies: what the agent should do next, given what it just saw.

A policy sees frames (never blocking the camera: it runs on its own thread and gets the newest frame) and
returns actions. Actions are pydantic models, so the same objects travel in process and over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter

from acquisition._mitosis import Detection, DetectionLike, detect_mitoses, nuclei_above_noise

__all__ = [
    "Action",
    "ClassicalDetector",
    "DetectorFactory",
    "FeedbackPolicy",
    "FrameView",
    "MitosisDetector",
    "MitosisPolicy",
    "Revisit",
    "SetExposure",
    "SetLightPower",
    "SkipPosition",
    "Stop",
    "action_adapter",
]


class Revisit(BaseModel):
    """Image this position again soon: `repeats` extra time points, `interval_s` apart, optionally as a z-stack."""

    action: Literal["revisit"] = "revisit"
    p: int
    delay_s: float = Field(default=0.0, ge=0)
    repeats: int = Field(default=3, ge=1, le=100)
    interval_s: float = Field(default=0.5, ge=0)
    z_planes: int = Field(default=1, ge=1, le=33)
    z_step_um: float = Field(default=1.0, gt=0)


class SetExposure(BaseModel):
    action: Literal["set_exposure"] = "set_exposure"
    exposure_ms: float = Field(gt=0, le=60_000)
    channel: str | None = None  # None: every channel


class SetLightPower(BaseModel):
    action: Literal["set_light_power"] = "set_light_power"
    power: float = Field(ge=0, le=100)


class SkipPosition(BaseModel):
    """Stop imaging a position (e.g. an empty field) for the next `time_points` plan time points (None: for good)."""

    action: Literal["skip_position"] = "skip_position"
    p: int
    time_points: int | None = None


class Stop(BaseModel):
    action: Literal["stop"] = "stop"
    reason: str = ""


Action = Annotated[Revisit | SetExposure | SetLightPower | SkipPosition | Stop, Field(discriminator="action")]
action_adapter: TypeAdapter[list[Action]] = TypeAdapter(list[Action])


@dataclass(frozen=True)
class FrameView:
    """What a policy is shown: the plane and where, when and how it was taken."""

    run_id: str
    frame_id: int
    t: int
    p: int
    c: int
    z: int
    channel: str | None
    x_um: float | None
    y_um: float | None
    z_um: float | None
    exposure_ms: float | None
    light_power: float | None
    acquired_at: datetime
    image: np.ndarray = field(repr=False)
    bit_depth: int = 16
    well: str | None = None


@runtime_checkable
class FeedbackPolicy(Protocol):
    """The extension point: anything with a name, a version and `decide` is a policy."""

    name: str
    version: str

    def wants(self, frame: FrameView) -> bool:
        """Whether this frame should be shown to `decide` at all (e.g. only the nuclear channel)."""
        ...

    def decide(self, frame: FrameView) -> list[Any]:
        """Actions for this frame (an empty list: carry on)."""
        ...


@runtime_checkable
class MitosisDetector(Protocol):
    """Finds dividing cells in a 2-D frame; the extension point for trained imaging models.

    `name` and `version` are what the `decisions` rows record as the deciding model (a registered model's
    name and registry version), so that every action traces back to the model behind it.
    """

    name: str
    version: str

    def __call__(self, image: np.ndarray) -> Sequence[DetectionLike]: ...


# Builds the detector inside the agent's process. Plain data crosses to spawned agents, so this must pickle:
# a module-level function or a `functools.partial` of one (e.g. loading a registered model's artifact).
# Acquisition never imports the models package: the command line, which may, resolves a registry reference
# into such a factory and hands it over in the `AgentSpec`.
DetectorFactory: TypeAlias = Callable[[], MitosisDetector]


class ClassicalDetector:
    """`detect_mitoses` behind the `MitosisDetector` protocol."""

    name = "mitosis-detector"
    version = "classical-1"

    def __init__(self, min_score: float | None = None) -> None:
        self.min_score = min_score

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return detect_mitoses(image) if self.min_score is None else detect_mitoses(image, min_score=self.min_score)


class MitosisPolicy:
    """The `local` policy: a detector of dividing cells, in process.

    - a field with a dividing cell is revisited at a higher rate (a burst of `burst` time points);
    - frames much brighter than needed lower the light power (photons are dose: spare the cells);
    - a field with no cells is skipped for the rest of the run.
    The detector is the classical one unless another `MitosisDetector` is given (the trained imaging model,
    built in the agent's process from `AgentSpec.detector`); its name and version are the policy's, and so
    the `model` and `model_version` of every `decisions` row.
    """

    def __init__(
        self,
        *,
        channel: str = "GFP",
        burst: int = 4,
        burst_interval_s: float = 0.25,
        min_score: float | None = None,
        target_mean_frac: float = 0.08,
        min_power: float = 5.0,
        detector: MitosisDetector | None = None,
    ) -> None:
        self.detector = detector if detector is not None else ClassicalDetector(min_score)
        self.name = self.detector.name
        self.version = self.detector.version
        self.channel = channel
        self.burst = burst
        self.burst_interval_s = burst_interval_s
        self.min_score = min_score
        self.target_mean_frac = target_mean_frac
        self.min_power = min_power
        self._bursting_until: dict[int, float] = {}
        self._power_set = False

    def wants(self, frame: FrameView) -> bool:
        return frame.channel is None or frame.channel == self.channel

    def decide(self, frame: FrameView) -> list[Any]:
        img = frame.image
        full = float(2**frame.bit_depth - 1)
        actions: list[Any] = []
        hi = float(np.percentile(img[::4, ::4], 99.5))
        lo = float(np.median(img[::4, ::4]))
        if hi - lo < 0.01 * full and not nuclei_above_noise(img):  # nothing above background: an empty field
            return [SkipPosition(p=frame.p)]
        if not self._power_set and frame.light_power and hi > 0.5 * full:
            # bright enough to halve the light and keep the cells' signal well above noise
            power = max(self.min_power, frame.light_power * 0.5)
            if power < frame.light_power:
                actions.append(SetLightPower(power=power))
                self._power_set = True
        hits = self.detector(img)
        now = frame.acquired_at.timestamp()
        if hits and self._bursting_until.get(frame.p, 0.0) < now:
            self._bursting_until[frame.p] = now + self.burst * self.burst_interval_s
            actions.append(Revisit(p=frame.p, repeats=self.burst, interval_s=self.burst_interval_s))
        return actions
