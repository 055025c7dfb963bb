"""Acquisition policies to compare: a fixed schedule, or a slow and dim one that a model speeds up where it matters.

A `PolicyArm` is what one arm of an experiment runs: the plan's interval and light power, and optionally a
feedback policy on top. `SmartPolicy` turns any model's policy (the local `MitosisPolicy`, or the served model
through `RemotePolicy`) into event-driven acquisition: the model says *where* a cell divides, the arm says how
fast and how deep to image it there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from acquisition._policy import FeedbackPolicy, FrameView, MitosisPolicy, Revisit

__all__ = [
    "FIXED_FAST",
    "FIXED_SLOW",
    "SMART",
    "PolicyArm",
    "PolicyFactory",
    "SmartPolicy",
    "default_policies",
]

FIXED_FAST, FIXED_SLOW, SMART = "fixed-fast", "fixed-slow", "smart"

# Builds a fresh policy for each run (policies keep per-run memory); picklable where it must cross processes.
PolicyFactory: TypeAlias = Callable[[], FeedbackPolicy]


class SmartPolicy:
    """A model's policy, with its revisits reshaped into bursts: `burst` time points `burst_interval_s` apart,
    each a `z_planes` z-stack, at most one burst in flight per position.

    Everything else the model asks for (skip an empty field, lower the light, stop) passes through; the
    deciding model's name and version stay the policy's, so `decisions` rows name the model behind them.
    The model is not shown a bursting position's frames (counted, not timed: a busy camera stretches a burst):
    it could not start another burst there, a burst frame must not start the next burst, and a model busy with
    them would miss other positions' frames (the feedback loop shows it only the newest).
    """

    def __init__(
        self,
        model: FeedbackPolicy,
        *,
        burst: int = 4,
        burst_interval_s: float = 0.3,
        z_planes: int = 3,
        z_step_um: float = 2.0,
    ) -> None:
        if burst < 1 or burst_interval_s < 0 or z_planes < 1 or z_step_um <= 0:
            raise ValueError("burst >= 1, burst_interval_s >= 0, z_planes >= 1 and z_step_um > 0, please")
        self.model = model
        self.name = model.name
        self.version = model.version
        self.burst = burst
        self.burst_interval_s = burst_interval_s
        self.max_z_planes = z_planes  # the agent sizes every image's z axis for the stacks (see `Agent`)
        self.z_step_um = z_step_um
        self._lock = threading.Lock()  # `wants` runs on the camera thread, `decide` on the policy's
        self._left: dict[int, int] = {}  # p -> frames of its burst still to come
        self._asked: dict[int, float] = {}  # p -> when its burst was asked for
        # a burst that never comes (the run stopped, the feed dropped it) stops hiding its position after this
        self._expiry_s = 1.0 + 10 * burst * burst_interval_s

    def _bursting(self, p: int) -> bool:
        return self._left.get(p, 0) > 0 and time.monotonic() - self._asked[p] < self._expiry_s

    def wants(self, frame: FrameView) -> bool:
        if not self.model.wants(frame):
            return False
        with self._lock:
            if not self._bursting(frame.p):
                return True
            self._left[frame.p] -= 1  # one of the burst's frames (the model wants every plane of it)
            return False

    def decide(self, frame: FrameView) -> list[Any]:
        actions = self.model.decide(frame)
        self.name, self.version = self.model.name, self.model.version  # a remote model names itself per reply
        out: list[Any] = []
        for a in actions:
            if not isinstance(a, Revisit):
                out.append(a)
                continue
            with self._lock:
                if self._bursting(a.p):
                    continue  # this position is already being imaged fast
                self._left[a.p] = self.burst * self.max_z_planes
                self._asked[a.p] = time.monotonic()
            out.append(
                Revisit(
                    p=a.p,
                    repeats=self.burst,
                    interval_s=self.burst_interval_s,
                    z_planes=self.max_z_planes,
                    z_step_um=self.z_step_um,
                )
            )
        return out


@dataclass(frozen=True)
class PolicyArm:
    """One acquisition policy of an experiment: the plan's time interval (wall seconds) and light power (%),
    and the feedback that acts on top of it (None: a fixed schedule)."""

    interval_s: float
    light_power: float
    feedback: PolicyFactory | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, not {self.interval_s!r}")
        if not 0 < self.light_power <= 100:
            raise ValueError(f"light_power must be in (0, 100] percent, not {self.light_power!r}")

    def settings(self) -> dict[str, Any]:
        """What the arm does, for the record (`policy_runs.settings`)."""
        out: dict[str, Any] = {"interval_s": self.interval_s, "light_power": self.light_power}
        if isinstance(self.feedback, _Smart):
            out.update(self.feedback.settings())
        elif self.feedback is not None:
            out["feedback"] = _describe(self.feedback)
        return out


def _describe(factory: PolicyFactory) -> str:
    """A factory's name for the record: a function's own, a partial's function's, else its type's."""
    target = getattr(factory, "func", factory)
    return str(getattr(target, "__qualname__", type(target).__qualname__))


def _local_model() -> FeedbackPolicy:
    return MitosisPolicy()


@dataclass(frozen=True)
class _Smart:
    """A picklable `PolicyFactory` of `SmartPolicy` around a model's factory."""

    model: PolicyFactory
    burst: int
    burst_interval_s: float
    z_planes: int
    z_step_um: float

    def settings(self) -> dict[str, Any]:
        return {
            "feedback": "SmartPolicy",
            "model": _describe(self.model),
            "burst": self.burst,
            "burst_interval_s": self.burst_interval_s,
            "z_planes": self.z_planes,
            "z_step_um": self.z_step_um,
        }

    def __call__(self) -> SmartPolicy:
        return SmartPolicy(
            self.model(),
            burst=self.burst,
            burst_interval_s=self.burst_interval_s,
            z_planes=self.z_planes,
            z_step_um=self.z_step_um,
        )


def default_policies(
    model: PolicyFactory | None = None,
    *,
    fast_interval_s: float = 0.5,
    slow_interval_s: float = 2.0,
    full_power: float = 100.0,
    low_power: float = 10.0,
    burst: int = 3,
    burst_interval_s: float = 0.3,
    z_planes: int = 3,
    z_step_um: float = 2.0,
) -> Mapping[str, PolicyArm]:
    """The experiment's three policies, in wall seconds and percent light power.

    - `fixed-fast`: every position every `fast_interval_s`, at `full_power`;
    - `fixed-slow`: every `slow_interval_s`, at `low_power`;
    - `smart`: fixed-slow's schedule and light, plus bursts wherever `model` (default: the in-process
      `MitosisPolicy` with the classical detector) sees a dividing cell.
    """
    return {
        FIXED_FAST: PolicyArm(fast_interval_s, full_power),
        FIXED_SLOW: PolicyArm(slow_interval_s, low_power),
        SMART: PolicyArm(
            slow_interval_s,
            low_power,
            _Smart(model or _local_model, burst, burst_interval_s, z_planes, z_step_um),
        ),
    }
