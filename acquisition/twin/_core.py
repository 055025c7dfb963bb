"""Assemble a `UniMMCore` around a `TwinSample`: devices, channel presets, pixel size."""

from __future__ import annotations

from pymmcore_plus.experimental.unicore import UniMMCore

from acquisition._teardown import detach_at_exit
from acquisition.twin._config import CHANNELS, TwinConfig
from acquisition.twin._devices import TwinCamera, TwinFocusStage, TwinLightSource, TwinShutter, TwinXYStage
from acquisition.twin._sample import TwinSample

__all__ = ["CAMERA", "CHANNEL_GROUP", "FOCUS", "LED", "PIXEL_CONFIG", "SHUTTER", "XY", "create_twin_core"]

CAMERA, XY, FOCUS, SHUTTER, LED = "Camera", "XY", "Z", "Shutter", "LED"
CHANNEL_GROUP = "Channel"
PIXEL_CONFIG = "TwinObjective"


def create_twin_core(
    config: TwinConfig | None = None, *, core: UniMMCore | None = None
) -> tuple[UniMMCore, TwinSample]:
    """A core ready for `core.mda.run(...)` and `snapImage()`, imaging a fresh `TwinSample`.

    Devices: "Camera" (uint16, height x width, Exposure in ms), "XY" and "Z" stages (moves outside the
    configured limits raise ValueError), "Shutter", "LED" (properties "Power", percent 0-100, default 50, and
    "Channel"). The "Channel" config group (the core's channel group) has presets "GFP" (nuclear H2B-GFP)
    and "mCherry" (cytoplasmic), which set the LED's line. Pixel size is `config.pixel_size_um`;
    auto-shutter is on. Pass `core` to load the twin into an existing, empty-of-these-labels core.
    """
    cfg = config or TwinConfig()
    core = core if core is not None else UniMMCore()
    taken = sorted({CAMERA, XY, FOCUS, SHUTTER, LED} & set(core.getLoadedDevices()))
    if taken:
        raise ValueError(f"the core already has devices labelled {taken}; the twin needs those labels")
    sample = TwinSample(cfg)
    camera = TwinCamera(sample)
    xy = TwinXYStage(cfg.stage_limits_um)
    z = TwinFocusStage(cfg.z_limits_um)
    shutter = TwinShutter()
    led = TwinLightSource(power=50.0)
    for label, device in ((CAMERA, camera), (XY, xy), (FOCUS, z), (SHUTTER, shutter), (LED, led)):
        core.loadPyDevice(label, device)
        core.initializeDevice(label)
    camera.attach(xy=xy, z=z, shutter=shutter, led=led, core=core, shutter_label=SHUTTER)

    core.setCameraDevice(CAMERA)
    core.setXYStageDevice(XY)
    core.setFocusDevice(FOCUS)
    core.setShutterDevice(SHUTTER)
    core.setAutoShutter(True)

    for name in CHANNELS:
        core.defineConfig(CHANNEL_GROUP, name, LED, "Channel", name)
    core.setChannelGroup(CHANNEL_GROUP)
    core.setConfig(CHANNEL_GROUP, CHANNELS[0])

    # A pixel-size preset with no device settings always matches, so it is always the current one
    # (a preset keyed on a Python device's property is invisible to the C++ side).
    if PIXEL_CONFIG not in core.getAvailablePixelSizeConfigs():
        core.definePixelSizeConfig(PIXEL_CONFIG)
    core.setPixelSizeUm(PIXEL_CONFIG, cfg.pixel_size_um)
    core.setPixelSizeConfig(PIXEL_CONFIG)

    detach_at_exit(core)
    return core, sample
