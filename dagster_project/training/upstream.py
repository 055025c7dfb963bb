"""What a step reads of its upstream: the metadata of an asset's newest materialization (of one partition), and the
models package's errors as one-line failures.

A model asset trains on the split its `training_set` pinned, an evaluation evaluates the version its model asset
registered, `served_model` confirms the version `production_model` promoted: each reads what the upstream
materialization recorded (Dagster's event log is the hand-over; the registry row it names is the data).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

import lake
import models

__all__ = ["model_failures", "upstream_metadata"]


def upstream_metadata(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, asset: str, partition: str | None = None
) -> dict[str, Any]:
    """The metadata values of `asset`'s newest materialization (of `partition`); a one-line failure if none."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        where = f" for partition {partition!r}" if partition else ""
        raise dg.Failure(description=f"{asset} has not been materialized{where}: materialize it first")
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


@contextmanager
def model_failures(metadata: Mapping[str, Any] | None = None) -> Iterator[None]:
    """A `models.ModelError` or `lake.LakeError` (bad input, a refused promotion, ...) as a `dg.Failure` with its
    one-line reason: the UI shows why, not a traceback."""
    try:
        yield
    except (models.ModelError, lake.LakeError) as e:
        raise dg.Failure(
            description=" ".join(str(e).split()), metadata=dict(metadata or {}), allow_retries=False
        ) from None
