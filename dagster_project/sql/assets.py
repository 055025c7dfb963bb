"""The SQL analysts' side: the DuckDB catalog file of every table's view, and table maintenance."""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project._report import lake_failures, markdown_table
from dagster_project.resources import LakeResource
from lake import TABLES, Lake, query, write_catalog

__all__ = ["CatalogConfig", "MaintenanceConfig", "catalog_path", "duckdb_catalog", "table_maintenance"]

GROUP = "sql"
CATALOG_NAME = "cellfarm.duckdb"
VIEWS = [*TABLES, "genes"]  # every table's view, and `genes` over `dataset_genes`


def catalog_path(target: Lake, path: str = "") -> Path:
    """``path``, else ``cellfarm.duckdb`` beside a local lake (``./.cellfarm/`` for a remote one)."""
    if path:
        return Path(path).expanduser()
    return (Path(target.root).parent if target.settings.is_local else Path(".cellfarm")) / CATALOG_NAME


class CatalogConfig(dg.Config):
    path: str = ""  # "": cellfarm.duckdb beside the lake


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    # every table asset of the lake this project defines; the file is views, so it only needs refreshing when
    # the set of tables or the lake's location changes, but its row counts tell analysts what is there
    deps=["cells", "genes", "hpa_subcellular", "acquisition_runs", "frames", "objects", "decisions", "twin_events"],
    description="A DuckDB database of views over every Delta table, for the DuckDB CLI: `duckdb cellfarm.duckdb`.",
)
def duckdb_catalog(
    context: dg.AssetExecutionContext, config: CatalogConfig, lake: LakeResource
) -> dg.MaterializeResult:
    target = lake.open()
    with lake_failures():
        out = write_catalog(target, catalog_path(target, config.path))
        counts = query(target, " UNION ALL ".join(f"SELECT '{v}' AS view, count(*) AS n_rows FROM {v}" for v in VIEWS))
    context.log.info(f"wrote {out}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "views": len(VIEWS),
            "open_with": dg.MetadataValue.md(f"`duckdb {out}`"),
            "rows_per_view": markdown_table(counts, max_rows=len(VIEWS)),
        }
    )


class MaintenanceConfig(dg.Config):
    # Vacuum removes files no version younger than this needs: a model's pinned training snapshot (its Delta
    # versions) stays readable for this long after a compaction.
    retention_hours: int = 720


@dg.asset(
    group_name=GROUP,
    kinds={"delta"},
    description="Compacts the small files of streaming writers (`optimize`) and removes files no retained version "
    "needs (`vacuum`), on every Delta table.",
)
def table_maintenance(
    context: dg.AssetExecutionContext, config: MaintenanceConfig, lake: LakeResource
) -> dg.MaterializeResult:
    target = lake.open()
    rows: list[dict[str, int | str]] = []
    with lake_failures():
        for name in TABLES:
            compacted = target.optimize(name)
            # full: also the files of writers killed before their commit (never in the log, so past any checkpoint)
            removed = target.vacuum(name, retention_hours=config.retention_hours, full=True)
            rows.append(
                {
                    "table": name,
                    "files_compacted": int(compacted.get("numFilesRemoved", 0)),
                    "files_written": int(compacted.get("numFilesAdded", 0)),
                    "files_vacuumed": len(removed),
                    "version": target.version(name),
                }
            )
    done = pa.Table.from_pylist(rows)
    n_compacted = int(pc.sum(done["files_compacted"]).as_py() or 0)
    n_vacuumed = int(pc.sum(done["files_vacuumed"]).as_py() or 0)
    context.log.info(f"{n_compacted} files compacted, {n_vacuumed} vacuumed over {len(rows)} tables")
    return dg.MaterializeResult(
        metadata={
            "files_compacted": dg.MetadataValue.int(n_compacted),
            "files_vacuumed": dg.MetadataValue.int(n_vacuumed),
            "retention_hours": config.retention_hours,
            "per_table": markdown_table(done, max_rows=len(rows)),
        }
    )
