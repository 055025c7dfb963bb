"""The serving job: promote the best evaluated model, then have the running service load it."""

from __future__ import annotations

import dagster as dg

__all__ = ["promote_and_serve_job"]

promote_and_serve_job = dg.define_asset_job(
    "promote_and_serve",
    selection=dg.AssetSelection.assets("production_model", "served_model"),
    description="Promote the best evaluated model of the newest training round that passes the gate, then tell "
    "the running service (`cellfarm serve`) to reload and confirm it serves that version.",
)
