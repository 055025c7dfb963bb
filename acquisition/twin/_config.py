"""Configuration of the digital-twin microscope: camera, stages, optics, cell population, light dose."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CHANNELS", "REFERENCE_FIELD_UM", "TwinConfig"]

# The fluorophores the twin's sample carries; they are also the presets of the "Channel" config group.
CHANNELS: tuple[str, ...] = ("GFP", "mCherry")
# The field `cells_per_field` counts cells in: the default camera (512 px at 0.65 µm), so that the plate's
# density is physical and a bigger camera or a finer pixel sees the same plate.
REFERENCE_FIELD_UM = 512 * 0.65


class TwinConfig(BaseModel):
    """Everything that makes one twin differ from another; every field has a default.

    Units: µm, sim seconds (the sample's clock, `time_scale` times the wall clock), milliseconds for
    exposures, percent for light power. Light dose is `power_pct * exposure_ms` per snap with the light on,
    summed per cell.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, ge=0, description="one seed for the cells, the focal plane and the camera noise")

    # camera
    width: int = Field(default=512, ge=16, le=8192)
    height: int = Field(default=512, ge=16, le=8192)
    pixel_size_um: float = Field(default=0.65, gt=0)
    bit_depth: int = Field(default=12, ge=8, le=16, description="frames are uint16 and saturate at 2**bit_depth - 1")
    offset_adu: float = Field(default=100.0, ge=0)
    read_noise_adu: float = Field(default=2.0, ge=0)
    gain_adu_per_e: float = Field(default=0.5, gt=0)
    default_exposure_ms: float = Field(default=50.0, gt=0)
    realtime_exposure: bool = Field(
        default=False, description="sleep for the exposure time in each snap, like a camera"
    )
    vignetting: float = Field(
        default=0.15, ge=0, lt=1, description="fractional illumination fall-off at the frame corners"
    )

    # clock
    time_scale: float = Field(default=60.0, ge=0, description="sim seconds per wall-clock second; 0 freezes the clock")

    # stages
    stage_limits_um: tuple[float, float, float, float] = (-50_000.0, 50_000.0, -50_000.0, 50_000.0)
    z_limits_um: tuple[float, float] = (-500.0, 500.0)

    # optics: the focal plane is z=0 at the stage origin, tilted across the plate
    focus_tilt_um_per_mm: float = Field(default=0.05, ge=0, description="largest tilt of the focal plane, per axis")
    psf_sigma_um: float = Field(default=0.3, gt=0)
    defocus_sigma_per_um: float = Field(default=0.3, ge=0, description="blur sigma grown per µm away from focus")
    max_defocus_sigma_px: float = Field(
        default=25.0, gt=0, description="blur stops growing here (keeps far defocus cheap)"
    )

    # population
    cells_per_field: int = Field(
        default=25, ge=1, description="mean cells at the start in a 332.8 µm square (the default camera's field)"
    )
    max_density_factor: float = Field(default=1.4, ge=1, description="crowding cap relative to the starting density")
    tile_um: float = Field(default=500.0, gt=50, description="the population is generated lazily per square tile")
    # A cell divides mean_cycle_s after its birth; a population with a steady age structure therefore
    # divides at ln(2) / mean_cycle_s per cell: ~5 divisions per 25-35-cell field per sim hour by default.
    mean_cycle_s: float = Field(
        default=18_000.0, gt=0, description="mean time from a cell's birth to its division (5 h)"
    )
    cycle_cv: float = Field(default=0.15, ge=0, lt=1)
    mitosis_duration_s: float = Field(default=1_800.0, gt=0, description="time a cell stays rounded and condensed")
    nucleus_radius_um: float = Field(default=5.0, gt=0)
    cell_radius_um: float = Field(default=11.0, gt=0)
    expression_cv: float = Field(default=0.15, ge=0, description="cell-to-cell spread of fluorophore brightness")
    motility_um: float = Field(
        default=6.0, ge=0, description="typical wandering distance of a cell from its birthplace"
    )
    motility_period_s: float = Field(default=10_800.0, gt=0)

    # appearance and photometry (photo-electrons per pixel per ms at 100 % power, interphase nucleus)
    gfp_rate_e_per_ms: float = Field(default=48.0, gt=0)
    mcherry_rate_e_per_ms: float = Field(default=16.0, gt=0)
    background: float = Field(default=0.03, ge=0, description="autofluorescence relative to an interphase nucleus")
    mitotic_brightness: float = Field(
        default=2.5, gt=1, description="GFP brightness of condensed chromatin vs interphase"
    )
    mitotic_radius_factor: float = Field(default=0.6, gt=0, lt=1)

    # light dose: dose = power_pct * exposure_ms, added to each cell in the field at each snap
    bleach_dose_gfp: float = Field(default=2.0e6, gt=0, description="dose at which GFP falls to 1/e")
    bleach_dose_mcherry: float = Field(default=4.0e6, gt=0)
    arrest_dose: float = Field(default=1.0e6, gt=0, description="above it the cell cycle stops")
    death_dose: float = Field(default=3.0e6, gt=0, description="above it the cell dies, stops and fades")
    death_fade_s: float = Field(default=3_600.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        xmin, xmax, ymin, ymax = self.stage_limits_um
        if not (xmin < xmax and ymin < ymax):
            raise ValueError(f"stage_limits_um must be (xmin, xmax, ymin, ymax) with min < max: {self.stage_limits_um}")
        if not self.z_limits_um[0] < self.z_limits_um[1]:
            raise ValueError(f"z_limits_um must be (zmin, zmax) with zmin < zmax: {self.z_limits_um}")
        if self.death_dose < self.arrest_dose:
            raise ValueError("death_dose must be at least arrest_dose")
        if self.mitosis_duration_s >= self.mean_cycle_s:
            raise ValueError("mitosis_duration_s must be shorter than mean_cycle_s")
        return self

    @property
    def fov_um(self) -> tuple[float, float]:
        """Field of view (width, height) in µm."""
        return self.width * self.pixel_size_um, self.height * self.pixel_size_um

    @property
    def max_adu(self) -> int:
        return int(2**self.bit_depth - 1)
