"""Ground-truth events of the twin's cell population."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["EventKind", "TwinEvent"]

EventKind = Literal["division", "death", "arrest"]


@dataclass(frozen=True, slots=True)
class TwinEvent:
    """One thing that happened to one cell.

    - ``division``: ``sim_time_s``/``wall_time`` is when mitosis started (the cell rounded up and its
      chromatin condensed); ``end_sim_time_s``/``end_wall_time`` is when the two daughters (``daughter_ids``)
      appeared. Both ends are None while mitosis is under way, and stay None if the cell died in mitosis.
    - ``arrest``: the cell's light dose crossed the arrest threshold; it will not divide again.
    - ``death``: the dose crossed the death threshold; the cell stops and fades.

    ``parent_id`` is the mother of ``cell_id`` (None for cells present when the sample was made);
    ``x_um``/``y_um`` where it happened, ``dose`` the cell's accumulated dose at that moment.
    """

    kind: EventKind
    cell_id: int
    parent_id: int | None
    sim_time_s: float
    wall_time: datetime
    x_um: float
    y_um: float
    dose: float
    end_sim_time_s: float | None = None
    end_wall_time: datetime | None = None
    daughter_ids: tuple[int, int] | None = None
