"""Delta tables through deltalake: create, append, merge/upsert, time travel, optimize and vacuum.

Functions take the table URI first and options as keywords, like ``deltalake`` itself. Writes retry on a
commit conflict so that several writers (N microscopes, two ingests) never lose a commit. ``storage_options``
default to the store's settings from the environment for an ``s3://`` table (conditional put included, see
:mod:`lake._storage`), so callers never pass credentials around.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.exceptions import TableNotFoundError as _DeltaTableNotFound

from lake._errors import LakeError, SchemaMismatchError, TableNotFoundError
from lake._schemas import TableSpec
from lake._storage import delta_options, is_remote

__all__ = [
    "append",
    "conform",
    "create",
    "delete",
    "exists",
    "merge",
    "open_table",
    "optimize",
    "read",
    "vacuum",
    "version",
]

T = TypeVar("T")

# Every open of a table reads each commit file since its last checkpoint, on a delta-rs I/O thread of its own that
# idles 10 s before exiting. With delta's default of a checkpoint every 100 commits, a table committed to every
# second (`frames`, `decisions`) re-read up to 100 files per commit and kept ~100 threads alive per process
# (measured: an agent's resident memory kept rising for minutes). A checkpoint every 10 commits bounds both.
CHECKPOINT_INTERVAL = "10"
_CHECKPOINT_KEY = "delta.checkpointInterval"
_RETRIES = 20
_STAGED = re.compile(r"#\d+$")


def _retry(fn: Callable[[], T], what: str) -> T:
    """Run a commit, retrying with backoff when another writer committed first."""
    for attempt in range(_RETRIES):
        try:
            return fn()
        except CommitFailedError:
            time.sleep(min(0.02 * 2**attempt, 1.0))
    raise LakeError(f"{what}: gave up after {_RETRIES} commit conflicts")


def _opts(uri: str, given: dict[str, str] | None) -> dict[str, str] | None:
    return given if given is not None else delta_options(uri)


def exists(uri: str, *, storage_options: dict[str, str] | None = None) -> bool:
    storage_options = _opts(uri, storage_options)
    return DeltaTable.is_deltatable(uri, storage_options=storage_options)


def create(uri: str, spec: TableSpec, *, storage_options: dict[str, str] | None = None) -> DeltaTable:
    """Create the table with its versioned schema, or open it if it exists (checking the version)."""
    storage_options = _opts(uri, storage_options)
    if not exists(uri, storage_options=storage_options):
        try:
            DeltaTable.create(
                uri,
                spec.schema,
                mode="ignore",  # a concurrent creator may win; both end with the same table
                partition_by=list(spec.partition_by) or None,
                name=spec.name,
                description=spec.description,
                configuration={_CHECKPOINT_KEY: CHECKPOINT_INTERVAL},
                storage_options=storage_options,
            )
        except (OSError, DeltaError) as e:
            raise LakeError(f"cannot create table {spec.name} at {uri}: {e}") from e
    return open_table(uri, spec, storage_options=storage_options)


def open_table(uri: str, spec: TableSpec | None = None, *, storage_options: dict[str, str] | None = None) -> DeltaTable:
    storage_options = _opts(uri, storage_options)
    try:
        dt = DeltaTable(uri, storage_options=storage_options)
    except _DeltaTableNotFound:
        name = spec.name if spec else uri
        raise TableNotFoundError(f"table {name} does not exist yet at {uri}") from None
    if spec is not None:
        found = TableSpec.parse_version(dt.metadata().description)
        if found != spec.version:
            raise SchemaMismatchError(
                f"table {spec.name} at {uri} has schema version {found}, this cellfarm expects {spec.version}"
            )
    return dt


def conform(data: pa.Table | Sequence[dict[str, Any]], spec: TableSpec) -> pa.Table:
    """Cast rows to the table's schema: missing nullable columns become nulls, extra columns are an error."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pylist(list(data))
    extra = set(table.column_names) - set(spec.schema.names)
    if extra:
        raise SchemaMismatchError(f"{spec.name}: unknown column(s) {', '.join(sorted(extra))}")
    cols = []
    for f in spec.schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if not f.nullable and col.null_count:
                raise SchemaMismatchError(f"{spec.name}.{f.name} may not be null")
        elif f.nullable:
            col = pa.nulls(table.num_rows, f.type)
        else:
            raise SchemaMismatchError(f"{spec.name}: missing required column {f.name}")
        try:
            cols.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaMismatchError(f"{spec.name}.{f.name}: cannot cast {col.type} to {f.type}: {e}") from e
    return pa.Table.from_arrays(cols, schema=spec.schema)


def append(
    uri: str,
    data: pa.Table | Sequence[dict[str, Any]],
    *,
    spec: TableSpec,
    storage_options: dict[str, str] | None = None,
) -> int:
    """Append rows (no key check: use :func:`merge` for idempotent inserts). Returns the new version."""
    storage_options = _opts(uri, storage_options)
    table = conform(data, spec)

    def _commit() -> int:
        dt = DeltaTable(uri, storage_options=storage_options)  # opened once: the write and its version
        if dt.metadata().configuration.get(_CHECKPOINT_KEY) is None:  # a table made before the setting: once
            dt.alter.set_table_properties({_CHECKPOINT_KEY: CHECKPOINT_INTERVAL})
        write_deltalake(dt, table, mode="append")
        return int(dt.version())

    return _retry(_commit, f"append to {spec.name}")


def merge(
    uri: str,
    data: pa.Table | Sequence[dict[str, Any]],
    *,
    spec: TableSpec,
    mode: Literal["insert", "upsert"] = "insert",
    keys: Sequence[str] | None = None,
    storage_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge on the key columns: ``insert`` adds only rows whose key is new (idempotent append),
    ``upsert`` also updates rows whose key exists. Returns deltalake's merge metrics."""
    storage_options = _opts(uri, storage_options)
    table = conform(data, spec)
    on = list(keys or spec.keys)
    if not on:
        raise ValueError(f"{spec.name} has no key to merge on")
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in on)

    def _commit() -> dict[str, Any]:
        dt = open_table(uri, spec, storage_options=storage_options)
        m = dt.merge(table, predicate=predicate, source_alias="s", target_alias="t")
        if mode == "upsert":
            m = m.when_matched_update_all()
        metrics: dict[str, Any] = m.when_not_matched_insert_all().execute()
        return metrics

    return _retry(_commit, f"merge into {spec.name}")


def delete(
    uri: str, predicate: str, *, spec: TableSpec, storage_options: dict[str, str] | None = None
) -> dict[str, Any]:
    storage_options = _opts(uri, storage_options)

    def _commit() -> dict[str, Any]:
        out: dict[str, Any] = open_table(uri, spec, storage_options=storage_options).delete(predicate)
        return out

    return _retry(_commit, f"delete from {spec.name}")


def read(
    uri: str,
    *,
    version: int | None = None,
    as_of: datetime | None = None,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    storage_options: dict[str, str] | None = None,
) -> pa.Table:
    """Read a table, optionally as of a version or a timestamp (time travel)."""
    storage_options = _opts(uri, storage_options)
    try:
        dt = DeltaTable(uri, version=version, storage_options=storage_options)
    except _DeltaTableNotFound:
        raise TableNotFoundError(f"table does not exist yet at {uri}") from None
    if as_of is not None:
        dt.load_as_version(as_of)
    ds = dt.to_pyarrow_dataset()
    return ds.to_table(columns=list(columns) if columns else None, filter=filter)


def version(uri: str, *, storage_options: dict[str, str] | None = None) -> int:
    storage_options = _opts(uri, storage_options)
    v = DeltaTable(uri, storage_options=storage_options).version()
    return int(v)


def optimize(
    uri: str,
    *,
    spec: TableSpec,
    target_size: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Compact small files (the micro-batches of streaming writers) into larger ones."""
    storage_options = _opts(uri, storage_options)

    def _commit() -> dict[str, Any]:
        dt = open_table(uri, spec, storage_options=storage_options)
        out: dict[str, Any] = dt.optimize.compact(target_size=target_size)
        return out

    return _retry(_commit, f"optimize {spec.name}")


def vacuum(
    uri: str,
    *,
    spec: TableSpec,
    retention_hours: int = 168,
    dry_run: bool = False,
    full: bool = False,
    storage_options: dict[str, str] | None = None,
) -> list[str]:
    """Delete files no version within ``retention_hours`` needs. Returns the files (to be) removed.

    ``full`` also removes data files the log never referenced (older than the retention): what a writer killed
    between its data file and its commit leaves behind, which a plain vacuum (since the last checkpoint) misses,
    and on a local table the half-written uploads (``part-*.parquet#1``) of a writer killed inside its data file,
    which delta-rs's vacuum never lists."""
    storage_options = _opts(uri, storage_options)
    dt = open_table(uri, spec, storage_options=storage_options)
    removed: list[str] = dt.vacuum(
        retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=full
    )
    if full and not is_remote(uri):
        removed += _staged_uploads(uri, retention_hours=retention_hours, dry_run=dry_run)
    return removed


def _staged_uploads(uri: str, *, retention_hours: int, dry_run: bool) -> list[str]:
    """object_store writes a local file to ``NAME#N`` and renames it when done; a kill in between leaves it."""
    root = Path(uri.removeprefix("file://"))
    cutoff = time.time() - retention_hours * 3600
    staged = [
        p
        for p in root.rglob("*#*")
        if _STAGED.search(p.name) and p.is_file() and "_delta_log" not in p.parts and p.stat().st_mtime <= cutoff
    ]
    if not dry_run:
        for p in staged:
            p.unlink(missing_ok=True)
    return [p.relative_to(root).as_posix() for p in staged]
