"""The checks every table asset gets: its schema is the versioned one, its keys are unique, it has rows, and
(where asked) its gene ids are Ensembl ids.

One multi-asset check per table asset: the checks stay separate in the UI (one result each, each blocking), but
they run as one step that opens the table once, so a run pays one step's event-log writes per table, not one per
check. Blocking by default, so a table that fails its checks stops the assets downstream of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import dagster as dg
import pyarrow as pa

import lake
from dagster_project.resources import LakeResource

__all__ = ["table_checks"]

GeneIds = Literal["all", "mapped"]


def table_checks(
    asset: dg.AssetKey | str | Sequence[str],
    table: str,
    *,
    min_rows: int = 1,
    gene_ids: GeneIds | None = None,
    blocking: bool = True,
) -> dg.AssetChecksDefinition:
    """The checks of Delta table ``table`` materialized by ``asset``: ``<table>_schema``, ``<table>_rows``,
    ``<table>_keys_unique`` (when the table has keys) and ``<table>_ensembl_ids`` (``gene_ids``: on all rows, or on
    the rows the ingest mapped to the gene reference; an atlas keeps its few unmappable genes under their own ids,
    counted in `datasets`)."""
    key = dg.AssetKey.from_coercible(asset)
    spec = lake.TABLES[table]
    docs = {
        f"{table}_schema": f"`{table}` has the columns and types of its versioned Arrow schema",
        f"{table}_rows": f"`{table}` has at least {min_rows} row(s)",
    }
    if spec.keys:
        docs[f"{table}_keys_unique"] = f"`{table}` has one row per ({', '.join(spec.keys)})"
    if gene_ids is not None:
        which = "mapped genes" if gene_ids == "mapped" else "rows"
        docs[f"{table}_ensembl_ids"] = f"`{table}.ensembl_id` is an Ensembl gene id on all {which}"

    @dg.multi_asset_check(
        name=f"{key.to_python_identifier()}_table_checks",
        specs=[dg.AssetCheckSpec(name, asset=key, description=doc, blocking=blocking) for name, doc in docs.items()],
    )
    def _checks(lake: LakeResource) -> Iterator[dg.AssetCheckResult]:
        results = _evaluate(lake.open(), table, min_rows=min_rows, gene_ids=gene_ids)
        for name, (passed, metadata) in results.items():
            yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=passed, metadata=metadata)

    return _checks


Outcome = tuple[bool, dict[str, Any]]  # (passed, metadata)


def _evaluate(target: lake.Lake, table: str, *, min_rows: int, gene_ids: GeneIds | None) -> dict[str, Outcome]:
    """Each check's (passed, metadata), from one open of the table."""
    spec = lake.TABLES[table]
    delta = target.table(table)
    found = lake.TableSpec.parse_version(delta.metadata().description)
    actual = pa.schema(delta.schema().to_arrow())
    missing = [f.name for f in spec.schema if f.name not in actual.names]
    wrong = [f.name for f in spec.schema if f.name in actual.names and actual.field(f.name).type != f.type]
    out: dict[str, Outcome] = {
        f"{table}_schema": (
            found == spec.version and not missing and not wrong,
            {"schema_version": found or 0, "expected": spec.version, "missing": missing, "wrong_type": wrong},
        )
    }
    if spec.keys:
        data = target.read(table, columns=list(spec.keys))
        n = data.num_rows
        distinct = data.group_by(list(spec.keys)).aggregate([]).num_rows if n else 0
        out[f"{table}_keys_unique"] = (n == distinct, {"rows": n, "distinct_keys": distinct})
    else:
        n = delta.count()
    out[f"{table}_rows"] = (n >= min_rows, {"rows": n, "min_rows": min_rows})
    if gene_ids is not None:
        genes = target.read(table, columns=["ensembl_id", "is_mapped"] if gene_ids == "mapped" else ["ensembl_id"])
        if gene_ids == "mapped":
            genes = genes.filter(genes["is_mapped"])
        ids = set(genes["ensembl_id"].to_pylist())
        bad = sorted(i for i in ids if not lake.is_ensembl_id(i))
        out[f"{table}_ensembl_ids"] = (
            not bad,
            {"genes": len(ids), "invalid": len(bad), "invalid_examples": bad[:5]},
        )
    return out
