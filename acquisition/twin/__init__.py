"""The digital-twin microscope: pure-Python devices on a `UniMMCore`, imaging a simulated cell population.

>>> import useq
>>> from acquisition.twin import TwinConfig, create_twin_core
>>> core, sample = create_twin_core(TwinConfig(seed=1))
>>> core.mda.run(useq.MDASequence(channels=["GFP"], time_plan={"interval": 0.5, "loops": 3}))
>>> sample.events()  # ground truth: divisions, arrests, deaths

Devices: "Camera" (uint16, `height` x `width`, 12-bit by default), "XY" and "Z" stages with hard limits,
"Shutter", "LED" ("Power" percent, "Channel" line); config group "Channel" with presets "GFP" (nuclear
H2B-GFP) and "mCherry" (cytoplasmic, dimmer). Auto-shutter is on.

The sample lives on a sim clock (`time_scale`, default 60 sim seconds per wall second). Cells wander,
grow and divide: a cell divides `mean_cycle_s` (5 h) after its birth, after `mitosis_duration_s` (30 min)
rounded up with condensed H2B-GFP ~2.5x brighter. Every snap with the light on adds
`power_pct * exposure_ms` of dose to each cell in the field: GFP bleaches to 1/e at 2e6, cells arrest at
1e6 and die at 3e6 (50 % for 50 ms is 2500 per snap).
"""

from acquisition.twin._config import CHANNELS, TwinConfig
from acquisition.twin._core import CAMERA, CHANNEL_GROUP, FOCUS, LED, SHUTTER, XY, create_twin_core
from acquisition.twin._devices import TwinCamera, TwinFocusStage, TwinLightSource, TwinShutter, TwinXYStage
from acquisition.twin._events import EventKind, TwinEvent
from acquisition.twin._sample import TwinSample

__all__ = [
    "CAMERA",
    "CHANNELS",
    "CHANNEL_GROUP",
    "FOCUS",
    "LED",
    "SHUTTER",
    "XY",
    "EventKind",
    "TwinCamera",
    "TwinConfig",
    "TwinEvent",
    "TwinFocusStage",
    "TwinLightSource",
    "TwinSample",
    "TwinShutter",
    "TwinXYStage",
    "create_twin_core",
    "frozen_plate",
]


def frozen_plate(seed: int, size: int) -> TwinSample:
    """The twin's plate `seed` with its clock frozen and a `size` x `size` camera: the imaging model's training
    and held-out data (a `models.imaging.PlateFactory`)."""
    return TwinSample(TwinConfig(seed=seed, time_scale=0, width=size, height=size))
