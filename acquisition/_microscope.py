"""The microscopes an agent drives: a Micro-Manager configuration, or the digital twin."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acquisition._teardown import detach_at_exit
from lake import InvalidInputError

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

    from acquisition.twin import TwinConfig, TwinSample

__all__ = ["LIGHT_DEVICE", "LIGHT_PROPERTY", "Microscope", "open_config", "open_twin"]

# The twin's light source; a Micro-Manager configuration may have none, and then power is not recorded.
LIGHT_DEVICE, LIGHT_PROPERTY = "LED", "Power"


@dataclass
class Microscope:
    """A ready core plus what the agent needs to know about it that the core does not say."""

    core: CMMCorePlus
    kind: str  # "twin" | "config"
    bit_depth: int
    xy_limits: tuple[float, float, float, float] | None = None
    z_limits: tuple[float, float] | None = None
    sample: TwinSample | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_light_power(self) -> bool:
        return self.core.hasProperty(LIGHT_DEVICE, LIGHT_PROPERTY) if LIGHT_DEVICE in self.devices else False

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.core.getLoadedDevices())

    def light_power(self) -> float | None:
        if not self.has_light_power:
            return None
        return float(self.core.getProperty(LIGHT_DEVICE, LIGHT_PROPERTY))

    def close(self) -> None:
        try:
            self.core.unloadAllDevices()
        finally:
            gc.collect()


def _with_software_autofocus(core: CMMCorePlus, limits: tuple[float, float] | None = None) -> None:
    """Plans with an `autofocus_plan` then focus by image where the core has no autofocus device."""
    from acquisition._autofocus import AutofocusEngine

    core.mda.set_engine(AutofocusEngine(core, limits=limits))


def open_twin(config: TwinConfig | None = None) -> Microscope:
    from acquisition.twin import TwinConfig, create_twin_core

    config = config or TwinConfig()
    core, sample = create_twin_core(config)
    _with_software_autofocus(core, config.z_limits_um)
    return Microscope(
        core=core,
        kind="twin",
        bit_depth=config.bit_depth,
        xy_limits=config.stage_limits_um,
        z_limits=config.z_limits_um,
        sample=sample,
        source=f"twin(seed={config.seed})",
        extra={"twin": config.model_dump()},
    )


def open_config(path: str | Path) -> Microscope:
    """A Micro-Manager system configuration, with the demo adapters of the `mm-test-adapters` wheel on the path."""
    import mm_test_adapters
    from pymmcore_plus import CMMCorePlus

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Micro-Manager configuration not found: {path}")
    core = CMMCorePlus()
    detach_at_exit(core)
    core.setDeviceAdapterSearchPaths([mm_test_adapters.device_adapter_path()])
    try:
        core.loadSystemConfiguration(str(path))
    except (RuntimeError, OSError) as e:
        first = " ".join(str(e).split())[:300]
        core.unloadAllDevices()
        raise InvalidInputError(f"cannot load Micro-Manager configuration {path}: {first}") from None
    _with_software_autofocus(core)
    return Microscope(core=core, kind="config", bit_depth=core.getImageBitDepth(), source=str(path))
