"""Progress reporting without a UI dependency: the CLI plugs a rich progress bar into this callback."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress", "null_progress"]


class Progress(Protocol):
    """Called as work advances: a stage name, units done so far and the total when known."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


def null_progress(stage: str, done: int, total: int | None) -> None:
    """The default: report nothing."""
