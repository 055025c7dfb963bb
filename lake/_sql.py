"""The SQL layer: DuckDB with every Delta table as a view through ``delta_scan``.

The Delta extension is loaded from the ``duckdb-extension-delta`` wheel's own file, never downloaded.
Dataset-scoped tables show only rows of committed datasets, so a crashed ingest is never visible in SQL.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from lake._errors import LakeError
from lake._lake import Lake
from lake._schemas import TABLES
from lake._sql_guard import check_read_only, lock_down, permission_hint
from lake._storage import configure_duckdb

if TYPE_CHECKING:  # duckdb is imported on first use: ingest processes never pay its ~30 MB
    import duckdb

__all__ = ["catalog_views", "connect", "delta_extension_path", "query", "write_catalog"]


def delta_extension_path() -> Path:
    import duckdb
    import duckdb_extension_delta

    base = Path(duckdb_extension_delta.__file__).parent / "extensions"
    exact = base / f"v{duckdb.__version__}" / "delta.duckdb_extension"
    if exact.is_file():
        return exact
    found = sorted(base.glob("*/delta.duckdb_extension"))
    if not found:
        raise LakeError(f"duckdb-extension-delta has no extension file under {base}")
    return found[-1]


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def catalog_views(lake: Lake) -> dict[str, str]:
    """View name -> SELECT over the lake's Delta tables (the SQL contract of DESIGN.md)."""
    views: dict[str, str] = {}
    committed = "dataset_id IN (SELECT dataset_id FROM datasets)"
    for spec in TABLES.values():
        scan = f"SELECT * FROM delta_scan({_lit(lake.table_uri(spec.name))})"
        if spec.latest_release_only:
            newest = (
                "SELECT d.dataset_id FROM datasets d WHERE d.dataset_id IN "
                f"(SELECT DISTINCT dataset_id FROM delta_scan({_lit(lake.table_uri(spec.name))})) "
                "ORDER BY d.ingested_at DESC LIMIT 1"
            )
            views[spec.name] = f"{scan} WHERE dataset_id = ({newest})"
        elif spec.dataset_scoped:
            views[spec.name] = f"{scan} WHERE {committed}"
        elif spec.run_scoped:
            # an import's run row precedes its dataset row (the import's commit point): hide it until then
            runs = (
                f"SELECT run_id FROM delta_scan({_lit(lake.table_uri('acquisition_runs'))}) "
                "WHERE microscope_id <> 'import' OR run_id IN (SELECT 'import-' || dataset_id FROM datasets)"
            )
            views[spec.name] = f"{scan} WHERE run_id IN ({runs})"
        else:
            views[spec.name] = scan
    views["genes"] = (
        "SELECT ensembl_id, any_value(symbol ORDER BY dataset_id) AS symbol, min(soma_joinid) AS soma_joinid, "
        "any_value(biotype) AS biotype, any_value(feature_length) AS feature_length, "
        "bool_or(is_mapped) AS is_mapped, list(dataset_id ORDER BY dataset_id) AS datasets, "
        "count(*) AS n_datasets, sum(nnz) AS nnz FROM dataset_genes GROUP BY ensembl_id"
    )
    return views


def _load_delta(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"LOAD {_lit(str(delta_extension_path()))}")


def connect(lake: Lake, *, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's views; for ad-hoc work in Python or a notebook."""
    import duckdb

    con = duckdb.connect(database)
    _load_delta(con)
    configure_duckdb(con, lake.root)  # an s3:// lake: httpfs from its wheel and a secret; nothing when local
    for name, select in catalog_views(lake).items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
    return con


_shared: dict[tuple[str, bool], duckdb.DuckDBPyConnection] = {}
_shared_lock = threading.Lock()


def _cursor(lake: Lake, *, writes: bool = False) -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory database per lake, mode and process: the extension is loaded and the views are
    bound once (about 0.25 s), while every query still reads the newest Delta snapshot."""
    with _shared_lock:
        con = _shared.get((lake.root, writes))
        if con is None:
            con = connect(lake)
            if not writes:
                lock_down(con, lake.root)
            _shared[(lake.root, writes)] = con
        return con.cursor()


def query(lake: Lake, sql: str, *, allow_writes: bool = False) -> pa.Table:
    """Run SQL over the lake; errors become one-line :class:`LakeError`s. Read-only unless `allow_writes`:
    SELECT (and EXPLAIN) only, and no file outside the lake (see `lake._sql_guard`)."""
    import duckdb

    con = _cursor(lake, writes=allow_writes)
    try:
        if not allow_writes:
            check_read_only(con, sql, root=lake.root)
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})  # None: a statement with no result
    except duckdb.Error as e:
        raise LakeError(f"SQL error: {str(e).splitlines()[0]}{permission_hint(e)}") from None
    finally:
        con.close()


def write_catalog(lake: Lake, path: str | os.PathLike[str]) -> Path:
    """Write a DuckDB database of the lake's views that the DuckDB CLI opens (``duckdb PATH``).

    The Delta extension is installed from the wheel's file into DuckDB's extension folder so that the CLI
    autoloads it for ``delta_scan``; nothing is downloaded.
    """
    out = Path(path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = connect(lake, database=str(tmp))
    try:
        con.execute(f"INSTALL {_lit(str(delta_extension_path()))}")
        configure_duckdb(con, lake.root, install=True)  # the CLI autoloads httpfs; its user brings a secret
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, out)  # a reader never sees a half-written catalog
    return out
