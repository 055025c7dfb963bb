"""Acquisition plans: useq-schema `MDASequence` from YAML/JSON files, checked before any hardware moves."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic
import useq
import yaml

from lake import InvalidInputError

__all__ = ["check_stage_limits", "default_plan", "load_plan", "plan_json"]


def load_plan(path: str | Path) -> useq.MDASequence:
    """Read an `MDASequence` from a `.yaml`/`.yml`/`.json` file; a one-line error names what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInputError(f"cannot read plan {path}: {e.strerror or e}") from None
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        if isinstance(e, yaml.MarkedYAMLError) and e.problem and mark is not None:  # what, and where
            first = f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})"
        raise InvalidInputError(f"plan {path} does not parse: {first}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"plan {path} must be a mapping of MDASequence fields, got {type(data).__name__}")
    try:
        return useq.MDASequence.model_validate(data)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "plan"
        raise InvalidInputError(f"plan {path} is not a valid MDASequence: {where}: {err['msg']}") from None


def default_plan(*, loops: int = 20, interval_s: float = 1.0) -> useq.MDASequence:
    """The demo's plan: three fields in a row, nuclear and cytoplasmic channels, a time lapse."""
    return useq.MDASequence.model_validate(
        {
            "axis_order": "tpcz",
            "stage_positions": [(0.0, 0.0, 0.0), (600.0, 0.0, 0.0), (1200.0, 0.0, 0.0)],
            "channels": [{"config": "GFP", "exposure": 20.0}, {"config": "mCherry", "exposure": 20.0}],
            "time_plan": {"interval": interval_s, "loops": loops},
        }
    )


def plan_json(plan: useq.MDASequence) -> str:
    return plan.model_dump_json(exclude_unset=True, exclude_defaults=True)


def check_stage_limits(
    events: Iterable[useq.MDAEvent],
    *,
    xy_limits: tuple[float, float, float, float] | None,
    z_limits: tuple[float, float] | None,
) -> None:
    """Refuse a plan that would drive a stage past its limits, before the run starts."""
    for ev in events:
        name = ev.pos_name or f"p={ev.index.get('p', 0)}"
        if xy_limits is not None and ev.x_pos is not None and ev.y_pos is not None:
            x0, x1, y0, y1 = xy_limits
            if not (x0 <= ev.x_pos <= x1 and y0 <= ev.y_pos <= y1):
                raise InvalidInputError(
                    f"position {name} (x={ev.x_pos:g}, y={ev.y_pos:g} um) is outside the stage limits "
                    f"x [{x0:g}, {x1:g}], y [{y0:g}, {y1:g}]"
                )
        if z_limits is not None and ev.z_pos is not None and not (z_limits[0] <= ev.z_pos <= z_limits[1]):
            raise InvalidInputError(
                f"position {name} z={ev.z_pos:g} um is outside the focus limits [{z_limits[0]:g}, {z_limits[1]:g}]"
            )
