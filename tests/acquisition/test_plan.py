"""Plans: YAML/JSON files become MDASequences; bad ones fail with one line before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import useq

import lake
from acquisition import check_stage_limits, load_plan


def test_yaml_and_json_plans_round_trip(tmp_path: Path) -> None:
    y = tmp_path / "plan.yaml"
    y.write_text(
        "axis_order: tpcz\n"
        "stage_positions:\n  - {x: 0, y: 0, z: 0}\n  - {x: 100, y: 50, z: 1}\n"
        "channels:\n  - {config: GFP, exposure: 15}\n"
        "time_plan: {interval: 0.5, loops: 3}\n"
        "z_plan: {range: 4, step: 2}\n"
    )
    plan = load_plan(y)
    assert plan.sizes["t"] == 3
    assert plan.sizes["p"] == 2
    assert plan.sizes["z"] == 3
    j = tmp_path / "plan.json"
    j.write_text(plan.model_dump_json())
    assert list(load_plan(j)) == list(plan)


def test_well_plate_plan(tmp_path: Path) -> None:
    y = tmp_path / "plate.yaml"
    y.write_text(
        "stage_positions:\n  plate: 96-well\n  a1_center_xy: [0, 0]\n  selected_wells: [[0, 1], [0, 1]]\n"
        "channels: [GFP]\n"
    )
    names = [e.pos_name for e in load_plan(y)]
    assert names == ["A1", "B2"]


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("time_plan: {interval: 1, loops: [", ".yaml", "does not parse"),
        ("{not json", ".json", "does not parse"),
        ("- just\n- a list\n", ".yaml", "must be a mapping"),
        ("time_plan: {interval: -1, loops: 'many'}\n", ".yaml", "is not a valid MDASequence"),
    ],
)
def test_bad_plans_fail_with_one_line(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    path = tmp_path / f"plan{suffix}"
    path.write_text(text)
    with pytest.raises(lake.InvalidInputError, match=message) as info:
        load_plan(path)
    assert "\n" not in str(info.value)


def test_missing_plan(tmp_path: Path) -> None:
    with pytest.raises(lake.InvalidInputError, match="cannot read plan"):
        load_plan(tmp_path / "nope.yaml")


def test_stage_limits() -> None:
    plan = useq.MDASequence(stage_positions=[(0, 0, 0), (2_000_000, 0, 0)])
    with pytest.raises(lake.InvalidInputError, match=r"outside the stage limits"):
        check_stage_limits(plan, xy_limits=(-1e5, 1e5, -1e5, 1e5), z_limits=None)
    check_stage_limits(plan, xy_limits=None, z_limits=(-10, 10))  # no xy limits known: allowed
    with pytest.raises(lake.InvalidInputError, match=r"focus limits"):
        check_stage_limits(useq.MDASequence(stage_positions=[(0, 0, 500)]), xy_limits=None, z_limits=(-10, 10))
