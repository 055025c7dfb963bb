"""The sql domain: the DuckDB catalog file the DuckDB CLI opens, table maintenance, and a failing blocking check
that keeps the catalog from being refreshed over bad data."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

import lake
from dagster_project.atlas.assets import hpa_subcellular
from dagster_project.atlas.checks import ATLAS_CHECKS
from dagster_project.resources import DropFolderResource, LakeResource
from dagster_project.sql.assets import duckdb_catalog, table_maintenance
from tests.conftest import HPA, need
from tests.dagster_project.conftest import checks_of, metadata_of

HPA_CHECKS = [c for c in ATLAS_CHECKS if {k.asset_key for k in c.check_keys} == {dg.AssetKey("hpa_subcellular")}]


def _hpa_subset(path: Path, lines: slice) -> Path:
    """A smaller HPA release: the real file's header and some of its genes."""
    with need(HPA).open() as f:
        rows = f.readlines()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([rows[0], *rows[1:][lines]]))
    return path


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    """A lake with two HPA releases (two commits to `datasets`: small files for maintenance to compact)."""
    root = tmp_path_factory.mktemp("sql")
    target = lake.Lake.open(root / "lake")
    lake.ingest_hpa(target, _hpa_subset(root / "a.tsv", slice(0, 100)))
    lake.ingest_hpa(target, _hpa_subset(root / "b.tsv", slice(100, 160)))
    return target


def _resources(target: lake.Lake, drop: Path | None = None) -> dict[str, object]:
    return {"lake": LakeResource(root=target.root), "drop": DropFolderResource(path=str(drop or ""))}


def test_catalog_is_a_duckdb_file_of_every_view(
    two_releases: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the Delta extension is installed here, from the wheel's file
    result = dg.materialize(
        [duckdb_catalog], instance=dg.DagsterInstance.ephemeral(), resources=_resources(two_releases)
    )
    meta = metadata_of(result, "duckdb_catalog")
    path = Path(meta["path"])
    assert path == Path(two_releases.root).parent / "cellfarm.duckdb"
    assert "| hpa_subcellular |" in meta["rows_per_view"]

    newest = lake.query(two_releases, "SELECT count(*) AS n FROM hpa_subcellular")["n"][0].as_py()
    con = duckdb.connect(str(path), read_only=True)
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert views >= {*lake.TABLES, "genes"}
        hpa = con.execute("SELECT count(*), count(DISTINCT dataset_id) FROM hpa_subcellular").fetchone()
        assert hpa == (newest, 1)  # the newest release only
        assert con.execute("SELECT count(*) FROM datasets WHERE kind = 'hpa'").fetchone() == (2,)
    finally:
        con.close()


def test_table_maintenance_compacts_and_vacuums_without_changing_rows(two_releases: lake.Lake) -> None:
    before = {t: two_releases.read(t).num_rows for t in lake.TABLES}
    assert len(two_releases.table("datasets").file_uris()) == 2
    result = dg.materialize(
        [table_maintenance],
        instance=dg.DagsterInstance.ephemeral(),
        resources=_resources(two_releases),
        run_config={"ops": {"table_maintenance": {"config": {"retention_hours": 0}}}},
    )
    meta = metadata_of(result, "table_maintenance")
    assert meta["files_compacted"] >= 2
    assert meta["files_vacuumed"] >= 2
    assert "| datasets | 2 | 1 |" in meta["per_table"]
    assert len(two_releases.table("datasets").file_uris()) == 1
    assert {t: two_releases.read(t).num_rows for t in lake.TABLES} == before
    assert lake.query(two_releases, "SELECT count(*) AS n FROM datasets")["n"][0].as_py() == 2


def test_a_failing_blocking_check_keeps_the_catalog_from_refreshing(tmp_path: Path) -> None:
    tsv = _hpa_subset(tmp_path / "drop" / "hpa" / "subcellular_location.tsv", slice(0, 50))
    target = lake.Lake.open(tmp_path / "lake")
    lake.ingest_hpa(target, tsv)
    # a committed release with one row twice: what a careless manual append leaves (the ingest itself is a no-op)
    target.append("hpa_subcellular", target.read("hpa_subcellular").slice(0, 1))
    result = dg.materialize(
        [hpa_subcellular, duckdb_catalog, *HPA_CHECKS],
        instance=dg.DagsterInstance.ephemeral(),
        resources=_resources(target, tmp_path / "drop"),
        raise_on_error=False,
    )
    checks = checks_of(result)
    assert checks["hpa_subcellular_keys_unique"] is False
    assert checks["hpa_subcellular_schema"]
    assert checks["hpa_subcellular_ensembl_ids"]
    materialized = {e.materialization.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialized == {"hpa_subcellular"}  # the catalog did not run on a table with duplicate keys
    assert not (tmp_path / "cellfarm.duckdb").exists()
