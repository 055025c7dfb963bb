"""Fixtures for the Dagster project: a domain's definitions bound to a temporary lake and drop folder, run on a
real (ephemeral, in-memory) Dagster instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.resources import DropFolderResource, LakeResource

__all__ = ["bind", "checks_of", "metadata_of"]


def bind(*domains: dg.Definitions, lake_dir: Path, drop_dir: Path | None = None) -> dg.Definitions:
    """The domains' definitions with resources on ``lake_dir`` (and ``drop_dir``) instead of the defaults."""
    resources: dict[str, Any] = {"lake": LakeResource(root=str(lake_dir))}
    if drop_dir is not None:
        resources["drop"] = DropFolderResource(path=str(drop_dir))
    return dg.Definitions.merge(*domains, dg.Definitions(resources=resources))


def metadata_of(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The metadata values of the run's one materialization of asset ``key``."""
    found = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == dg.AssetKey(key)
    ]
    assert len(found) == 1, f"{key}: {len(found)} materializations"
    return {k: getattr(v, "value", v) for k, v in found[0].metadata.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    """Check name -> passed, for every check the run evaluated."""
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
