"""cellfarm's Dagster project: ``dagster dev -m dagster_project`` (or ``cellfarm ui``) loads :data:`defs`."""

from __future__ import annotations

from dagster_project.definitions import defs

__all__ = ["defs"]
