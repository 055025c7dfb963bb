"""Crash recovery for ingests: whatever a killed writer left past the last commit is removed before the next
writer starts (and when a writer fails), under the ingest lock: a local ``flock`` for a lake on disk, a lease
on the object store for an ``s3://`` lake (its writers may be on several machines)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from lake import _soma
from lake._lake import Lake
from lake._lease import lease
from lake._lock import writer_lock
from lake._schemas import TABLES

__all__ = ["ingest_transaction", "recover_lake"]


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recover_lake(lake: Lake) -> dict[str, int]:
    """Remove uncommitted SOMA entries and Delta rows of datasets that were never registered."""
    removed: dict[str, int] = {}
    n = _soma.recover(lake.settings.soma_uri, lake.committed_soma_timestamp())
    if n:
        removed["soma"] = n
    committed = set(lake.read("datasets", columns=["dataset_id"])["dataset_id"].to_pylist())
    for spec in TABLES.values():
        if not spec.dataset_scoped:
            continue
        dt = lake.table(spec.name)
        present = {p["dataset_id"] for p in dt.partitions()}
        orphans = sorted(present - committed)
        if orphans:
            pred = f"dataset_id IN ({', '.join(_sql_str(o) for o in orphans)})"
            metrics = lake.delete(spec.name, pred)
            removed[spec.name] = int(metrics.get("num_deleted_rows", 0))
    return removed


def _ingest_lock(lake: Lake) -> AbstractContextManager[None]:
    if lake.settings.is_local:
        return writer_lock(lake.settings.local_state_dir / "ingest.lock")
    return lease(lake.settings.uri("_state", "ingest.lease"))


@contextmanager
def ingest_transaction(lake: Lake) -> Iterator[int | None]:
    """Hold the ingest lock on a recovered lake; yields the committed SOMA timestamp.

    On failure the lake is recovered again before the lock is released, so the error leaves it as it was.
    """
    with _ingest_lock(lake):
        recover_lake(lake)
        try:
            yield lake.committed_soma_timestamp()
        except BaseException:
            recover_lake(lake)
            raise
