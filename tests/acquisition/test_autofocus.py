"""Software autofocus on the twin: a plan's `autofocus_plan` finds the tilted focal plane at every position."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import useq

import lake
from acquisition import Agent, AutofocusEngine, Microscope, SoftwareAutofocus, find_focus, open_twin
from acquisition._autofocus import _parabola_peak
from acquisition.twin import TwinConfig
from tests.acquisition.conftest import frames_of

# a steep tilt (1 µm per mm), so positions 5 mm apart have focal planes µm apart
TILTED = TwinConfig(seed=3, width=256, height=256, focus_tilt_um_per_mm=1.0, time_scale=0)
POSITIONS = [(-4000.0, 3000.0, 0.0), (4000.0, -2000.0, 0.0), (0.0, 0.0, 0.0)]


@pytest.fixture
def scope() -> Iterator[Microscope]:
    m = open_twin(TILTED)
    yield m
    m.close()


def _plan(autofocus: bool) -> useq.MDASequence:
    spec: dict[str, object] = {
        "stage_positions": POSITIONS,
        "channels": ["GFP"],
        "time_plan": {"interval": 0, "loops": 2},
    }
    if autofocus:
        spec["autofocus_plan"] = {"autofocus_device_name": "Z", "axes": ["p"]}
    return useq.MDASequence.model_validate(spec)


def test_twin_uses_the_software_autofocus_engine(scope: Microscope) -> None:
    assert isinstance(scope.core.mda.engine, AutofocusEngine)
    assert not scope.core.getAutoFocusDevice()  # no hardware autofocus: the search is by image


def test_autofocus_plan_finds_each_positions_focal_plane(tmp_lake: lake.Lake, scope: Microscope) -> None:
    assert scope.sample is not None
    result = Agent(tmp_lake, scope, microscope_id="af").run(_plan(autofocus=True))
    assert result.status == "completed", result.error
    frames = frames_of(tmp_lake, result.run_id).to_pylist()
    assert len(frames) == 6
    step = SoftwareAutofocus().fine_step_um
    for f in frames:
        truth = scope.sample.focal_plane_um(f["x_um"], f["y_um"])
        assert abs(f["z_um"] - truth) < step, (f["p"], f["z_um"], truth)
    # useq refocuses whenever the position changes: once per position and time point. The second search
    # starts where the first ended (the correction is kept per position), so it moves little.
    searches = result.summary["autofocus"]
    assert [s["p"] for s in searches] == [0, 1, 2, 0, 1, 2]
    assert all(s["n_images"] > 10 for s in searches)
    for first, second in zip(searches[:3], searches[3:], strict=True):
        assert second["z_start_um"] == pytest.approx(first["z_best_um"])
        assert abs(second["z_best_um"] - first["z_best_um"]) < step
    assert [f["z_um"] for f in frames] == pytest.approx([s["z_best_um"] for s in searches])


def test_focused_frames_are_sharper_than_unfocused(tmp_lake: lake.Lake, scope: Microscope) -> None:
    assert scope.sample is not None
    off = max(abs(scope.sample.focal_plane_um(x, y)) for x, y, _ in POSITIONS)
    assert off > 3  # the fixture's premise: without autofocus, some positions are far out of focus
    plain = Agent(tmp_lake, scope, microscope_id="plain").run(_plan(autofocus=False))
    focused = Agent(tmp_lake, scope, microscope_id="af").run(_plan(autofocus=True))
    assert "autofocus" not in plain.summary
    score = {
        r.run_id: {f["p"]: f["focus_score"] for f in frames_of(tmp_lake, r.run_id).to_pylist()}
        for r in (plain, focused)
    }
    for p, (x, y, _) in enumerate(POSITIONS):
        if abs(scope.sample.focal_plane_um(x, y)) > 3:
            assert score[focused.run_id][p] > 3 * score[plain.run_id][p]


def test_find_focus_stays_inside_the_focus_limits(scope: Microscope) -> None:
    core = scope.core
    core.setXYPosition(-4000.0, 3000.0)  # focal plane near +5 µm
    core.setZPosition(0.0)
    result = find_focus(core, limits=(-10.0, 2.0))
    assert -10.0 <= result.z_best_um <= 2.0
    assert all(-10.0 <= z <= 2.0 for z, _ in result.planes)
    assert core.getZPosition() == pytest.approx(result.z_best_um)
    with pytest.raises(RuntimeError, match="no plane within the focus limits"):
        find_focus(core, limits=(100.0, 200.0))


def test_parabola_vertex() -> None:
    pts = [(z, -((z - 1.3) ** 2) + 4.0) for z in (0.5, 1.0, 1.5, 2.0)]
    assert _parabola_peak(pts) == pytest.approx(1.3)
    assert _parabola_peak([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]) is None  # peak at the edge: no vertex
    assert _parabola_peak([(0.0, 1.0), (1.0, 2.0)]) is None
