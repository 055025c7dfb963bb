"""The `local` policy's detector by injection: a picklable factory in the `AgentSpec`, no `models` import."""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pytest

import lake
from acquisition import (
    AgentSpec,
    ClassicalDetector,
    FrameView,
    MitosisDetector,
    MitosisPolicy,
    Revisit,
    SkipPosition,
    make_policy,
)
from acquisition.twin import TwinConfig, TwinSample


@dataclass(frozen=True)
class _Hit:
    y: float
    x: float
    score: float
    area_px: int


class _Stub:
    """A detector from elsewhere (as the trained CNN is): its own detection type, its own name and version."""

    def __init__(self, version: str, hits: int) -> None:
        self.name, self.version, self.hits = "stub-cnn", version, hits

    def __call__(self, image: np.ndarray) -> list[_Hit]:
        return [_Hit(10.0, 10.0, 0.9, 40)] * self.hits


def make_stub(version: str, hits: int = 1) -> _Stub:  # module level: a spawned agent can import it
    return _Stub(version, hits)


def _view(image: np.ndarray, p: int = 0) -> FrameView:
    return FrameView(
        run_id="r",
        frame_id=0,
        t=0,
        p=p,
        c=0,
        z=0,
        channel="GFP",
        x_um=0.0,
        y_um=0.0,
        z_um=0.0,
        exposure_ms=0.2,
        light_power=50.0,
        acquired_at=datetime.now(UTC),
        image=image,
        bit_depth=12,
    )


def test_the_spec_carries_a_picklable_factory_that_the_policy_calls() -> None:
    spec = AgentSpec(
        lake_root="/nowhere", microscope_id="twin", policy="local", detector=functools.partial(make_stub, "7")
    )
    clone = pickle.loads(pickle.dumps(spec))  # what a spawned agent process receives
    policy = make_policy(clone.policy, detector=clone.detector)
    assert isinstance(policy, MitosisPolicy)
    assert isinstance(policy.detector, MitosisDetector)
    assert (policy.name, policy.version) == ("stub-cnn", "7")  # what every decisions row records
    classical = make_policy("local")
    assert isinstance(classical, MitosisPolicy)
    assert isinstance(classical.detector, ClassicalDetector)
    assert (classical.name, classical.version) == ("mitosis-detector", "classical-1")
    with pytest.raises(lake.InvalidInputError, match="for --policy local"):
        make_policy("none", detector=functools.partial(make_stub, "7"))


@pytest.fixture(scope="module")
def plate() -> TwinSample:
    sample = TwinSample(TwinConfig(seed=11, time_scale=0))
    sample.advance(5_000.0)
    return sample


def test_a_dim_field_with_cells_is_not_skipped_as_empty(plate: TwinSample) -> None:
    x, y = 2_000.0, -3_000.0
    assert plate.cells_in_view(x, y)["ids"].size >= 10
    dim, _ = plate.render(x_um=x, y_um=y, z_um=plate.focal_plane_um(x, y), exposure_ms=0.2, power_pct=50.0)
    assert float(dim.max()) - float(np.median(dim)) < 0.01 * 4095  # no contrast on the full scale
    actions = MitosisPolicy(detector=make_stub("1")).decide(_view(dim))
    assert [type(a) for a in actions] == [Revisit]  # the detector is asked, and its hit answered
    assert MitosisPolicy(detector=make_stub("1", hits=0)).decide(_view(dim)) == []
    dark, _ = plate.render(x_um=x, y_um=y, z_um=plate.focal_plane_um(x, y), light_on=False)
    assert MitosisPolicy(detector=make_stub("1")).decide(_view(dark, p=2)) == [SkipPosition(p=2)]
