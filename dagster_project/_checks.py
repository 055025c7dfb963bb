"""Asset checks every table asset gets: its schema is the versioned one, its keys are unique, it is not empty.

Blocking by default, so a table that fails its checks stops the assets downstream of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dagster as dg
import pyarrow as pa

import lake
from dagster_project.resources import LakeResource

__all__ = ["gene_ids_check", "table_checks"]


def _schema_check(table: str) -> Callable[[lake.Lake], dg.AssetCheckResult]:
    spec = lake.TABLES[table]

    def check(target: lake.Lake) -> dg.AssetCheckResult:
        delta = target.table(table)
        found = lake.TableSpec.parse_version(delta.metadata().description)
        actual = pa.schema(delta.schema().to_arrow())
        missing = [f.name for f in spec.schema if f.name not in actual.names]
        wrong = [f.name for f in spec.schema if f.name in actual.names and actual.field(f.name).type != f.type]
        return dg.AssetCheckResult(
            passed=found == spec.version and not missing and not wrong,
            metadata={"schema_version": found or 0, "expected": spec.version, "missing": missing, "wrong_type": wrong},
        )

    return check


def _keys_check(table: str) -> Callable[[lake.Lake], dg.AssetCheckResult]:
    keys = lake.TABLES[table].keys

    def check(target: lake.Lake) -> dg.AssetCheckResult:
        data = target.read(table, columns=list(keys))
        n = data.num_rows
        distinct = data.group_by(list(keys)).aggregate([]).num_rows if n else 0
        return dg.AssetCheckResult(passed=n == distinct, metadata={"rows": n, "distinct_keys": distinct})

    return check


def _rows_check(table: str, min_rows: int) -> Callable[[lake.Lake], dg.AssetCheckResult]:
    def check(target: lake.Lake) -> dg.AssetCheckResult:
        n = target.table(table).count()
        return dg.AssetCheckResult(passed=n >= min_rows, metadata={"rows": n, "min_rows": min_rows})

    return check


def table_checks(
    asset: dg.AssetKey | str | Sequence[str],
    table: str,
    *,
    min_rows: int = 1,
    blocking: bool = True,
) -> list[dg.AssetChecksDefinition]:
    """Schema, unique keys and row count checks of Delta table ``table`` materialized by ``asset``."""
    key = dg.AssetKey.from_coercible(asset)
    makers: dict[str, tuple[str, Callable[[lake.Lake], dg.AssetCheckResult]]] = {
        f"{table}_schema": (f"`{table}` has the columns and types of its versioned Arrow schema", _schema_check(table)),
        f"{table}_rows": (f"`{table}` has at least {min_rows} row(s)", _rows_check(table, min_rows)),
    }
    if lake.TABLES[table].keys:
        keys = ", ".join(lake.TABLES[table].keys)
        makers[f"{table}_keys_unique"] = (f"`{table}` has one row per ({keys})", _keys_check(table))
    return [_make(key, name, doc, fn, blocking) for name, (doc, fn) in makers.items()]


def _gene_ids_check(table: str, only_mapped: bool) -> Callable[[lake.Lake], dg.AssetCheckResult]:
    def check(target: lake.Lake) -> dg.AssetCheckResult:
        data = target.read(table, columns=["ensembl_id", "is_mapped"] if only_mapped else ["ensembl_id"])
        if only_mapped:
            data = data.filter(data["is_mapped"])
        ids = set(data["ensembl_id"].to_pylist())
        bad = sorted(i for i in ids if not lake.is_ensembl_id(i))
        return dg.AssetCheckResult(
            passed=not bad, metadata={"genes": len(ids), "invalid": len(bad), "invalid_examples": bad[:5]}
        )

    return check


def gene_ids_check(
    asset: dg.AssetKey | str | Sequence[str], table: str, *, only_mapped: bool = False, blocking: bool = True
) -> dg.AssetChecksDefinition:
    """Every ``ensembl_id`` of ``table`` is an Ensembl gene id (``only_mapped``: of the rows the ingest mapped to
    the gene reference; an atlas keeps its few unmappable genes under their own ids, counted in `datasets`)."""
    which = "mapped genes" if only_mapped else "rows"
    return _make(
        dg.AssetKey.from_coercible(asset),
        f"{table}_ensembl_ids",
        f"`{table}.ensembl_id` is an Ensembl gene id on all {which}",
        _gene_ids_check(table, only_mapped),
        blocking,
    )


def _make(
    key: dg.AssetKey, name: str, doc: str, fn: Callable[[lake.Lake], dg.AssetCheckResult], blocking: bool
) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=key, name=name, description=doc, blocking=blocking)
    def _check(lake: LakeResource) -> dg.AssetCheckResult:
        return fn(lake.open())

    return _check
