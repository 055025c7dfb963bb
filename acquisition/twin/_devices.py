"""The twin's pure-Python devices for `UniMMCore`: camera, XY stage, focus stage, shutter, LED light source.

The camera reads the other devices' state directly at each snap (no `core.state()`, which is slow).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pymmcore_plus.experimental.unicore import (
    GenericDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    XYStageDevice,
    pymm_property,
)

from acquisition.twin._config import CHANNELS

if TYPE_CHECKING:
    from numpy.typing import DTypeLike
    from pymmcore_plus.experimental.unicore import UniMMCore

    from acquisition.twin._sample import TwinSample

__all__ = ["TwinCamera", "TwinFocusStage", "TwinLightSource", "TwinShutter", "TwinXYStage"]

_MAX_EXPOSURE_MS = 600_000.0


class TwinXYStage(XYStageDevice):
    """XY stage with hard travel limits: a move outside them raises `ValueError` and does not move."""

    def __init__(self, limits_um: tuple[float, float, float, float]) -> None:
        super().__init__()
        self._limits = limits_um
        self._x = 0.0
        self._y = 0.0
        self._origin = (0.0, 0.0)  # stage coordinates = physical position - origin

    def physical_position_um(self) -> tuple[float, float]:
        """Where the stage is over the plate, whatever origin the user set."""
        return self._x, self._y

    def set_position_um(self, x: float, y: float) -> None:
        px, py = float(x) + self._origin[0], float(y) + self._origin[1]
        xmin, xmax, ymin, ymax = self._limits
        if not (math.isfinite(px) and math.isfinite(py) and xmin <= px <= xmax and ymin <= py <= ymax):
            raise ValueError(
                f"XY position ({x}, {y}) µm is outside the stage limits: "
                f"x in [{xmin}, {xmax}], y in [{ymin}, {ymax}] µm"
            )
        self._x, self._y = px, py
        if self._core_proxy_ is not None:
            self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self._x - self._origin[0], self._y - self._origin[1]

    def set_origin_x(self) -> None:
        self._origin = (self._x, self._origin[1])

    def set_origin_y(self) -> None:
        self._origin = (self._origin[0], self._y)

    def home(self) -> None:
        self._x, self._y = 0.0, 0.0

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""


class TwinFocusStage(StageDevice):
    """Focus drive with hard limits; z=0 is the plate's focal plane at the stage origin."""

    def __init__(self, limits_um: tuple[float, float]) -> None:
        super().__init__()
        self._limits = limits_um
        self._z = 0.0
        self._origin = 0.0

    def physical_position_um(self) -> float:
        return self._z

    def set_position_um(self, val: float) -> None:
        pz = float(val) + self._origin
        zmin, zmax = self._limits
        if not (math.isfinite(pz) and zmin <= pz <= zmax):
            raise ValueError(f"Z position {val} µm is outside the focus limits [{zmin}, {zmax}] µm")
        self._z = pz
        if self._core_proxy_ is not None:
            self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_position_um(self) -> float:
        return self._z - self._origin

    def set_origin(self) -> None:
        self._origin = self._z

    def home(self) -> None:
        self._z = 0.0

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""


class TwinShutter(ShutterDevice):
    """The light path's shutter; closed means no excitation light reaches the sample."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        return self._open

    def set_open(self, open: bool) -> None:
        self._open = bool(open)


class TwinLightSource(GenericDevice):
    """A two-line LED: `Channel` picks the excitation line (GFP or mCherry), `Power` sets its percent."""

    def __init__(self, power: float = 50.0) -> None:
        super().__init__()
        self._power = float(power)
        self._channel = CHANNELS[0]

    @pymm_property(limits=(0.0, 100.0), name="Power", property_type=float)
    def power(self) -> float:
        """Light power in percent of the maximum."""
        return self._power

    @power.setter
    def _set_power(self, value: float) -> None:
        self._power = float(value)

    @pymm_property(allowed_values=CHANNELS, name="Channel", property_type=str)
    def channel(self) -> str:
        """The excitation line, named after the fluorophore it excites."""
        return self._channel

    @channel.setter
    def _set_channel(self, value: str) -> None:
        self._channel = str(value)

    # plain accessors for the camera (no property machinery on the acquisition thread)
    def current_power(self) -> float:
        return self._power

    def current_channel(self) -> str:
        return self._channel


class TwinCamera(SimpleCameraDevice):
    """A uint16 camera whose frames the `TwinSample` renders from the other devices' current state."""

    def __init__(self, sample: TwinSample) -> None:
        super().__init__()
        cfg = sample.config
        self._sample = sample
        self._shape = (cfg.height, cfg.width)
        self._exposure = cfg.default_exposure_ms
        self._xy: TwinXYStage | None = None
        self._z: TwinFocusStage | None = None
        self._shutter: TwinShutter | None = None
        self._led: TwinLightSource | None = None
        self._core: weakref.ref[UniMMCore] | None = None
        self._shutter_label = ""
        self.last_metadata: dict[str, Any] = {}
        """Metadata of the latest snap (`snapImage` drops what the camera returns; sequences keep it)."""

    def attach(
        self,
        *,
        xy: TwinXYStage,
        z: TwinFocusStage,
        shutter: TwinShutter,
        led: TwinLightSource,
        core: UniMMCore,
        shutter_label: str,
    ) -> None:
        """Wire the devices whose state a snap depends on (done by `create_twin_core`)."""
        self._xy, self._z, self._shutter, self._led = xy, z, shutter, led
        self._core = weakref.ref(core)
        self._shutter_label = shutter_label

    @property
    def sample(self) -> TwinSample:
        return self._sample

    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> DTypeLike:
        return np.uint16

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        value = float(exposure)
        if not (0 < value <= _MAX_EXPOSURE_MS):
            raise ValueError(f"exposure must be in (0, {_MAX_EXPOSURE_MS:g}] ms, not {exposure!r}")
        self._exposure = value

    @pymm_property(name="BitDepth", property_type=int)
    def bit_depth(self) -> int:
        """Bits the ADC delivers; frames are uint16 and saturate at 2**BitDepth - 1."""
        return self._sample.config.bit_depth

    def _light_on(self) -> bool:
        if self._shutter is None:
            return True
        if self._shutter.get_open():
            return True
        # UniMMCore does not open a Python shutter around a Python camera's snap; with auto-shutter on
        # the light is on during the exposure, as on a real microscope.
        core = self._core() if self._core is not None else None
        return bool(core is not None and core.getAutoShutter() and core.getShutterDevice() == self._shutter_label)

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        x, y = self._xy.physical_position_um() if self._xy is not None else (0.0, 0.0)
        z = self._z.physical_position_um() if self._z is not None else 0.0
        led = self._led
        _, meta = self._sample.render(
            x_um=x,
            y_um=y,
            z_um=z,
            channel=led.current_channel() if led is not None else CHANNELS[0],
            exposure_ms=self._exposure,
            power_pct=led.current_power() if led is not None else 100.0,
            light_on=self._light_on(),
            out=buffer,
        )
        if self._sample.config.realtime_exposure:
            time.sleep(self._exposure / 1000.0)
        self.last_metadata = meta
        return meta
