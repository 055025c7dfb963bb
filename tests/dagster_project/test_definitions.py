"""The one `Definitions` loads as `dagster dev -m dagster_project` loads it: every asset in a domain group, every
lake table asset checked, the sensors, jobs and schedules named as the README says."""

from __future__ import annotations

import dagster as dg
import pytest

import lake
from dagster_project import defs

DOMAINS = {"atlas", "imaging", "training", "serving", "sql"}
# asset key -> the lake table it is (`genes` is the `dataset_genes` table; SQL's `genes` view aggregates it)
TABLE_OF = {**{name: name for name in lake.TABLES}, "genes": "dataset_genes"}


@pytest.fixture(scope="module")
def graph() -> dg.AssetGraph:
    dg.Definitions.validate_loadable(defs)
    return defs.resolve_asset_graph()


def test_every_asset_is_in_a_domain_group(graph: dg.AssetGraph) -> None:
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert {k: g for k, g in groups.items() if g not in DOMAINS} == {}
    for key in ("soma_experiment", "cells", "genes", "hpa_subcellular"):
        assert groups[key] == "atlas"
    for key in ("acquisition_runs", "frames", "decisions", "twin_events", "run_qc", "objects", "policy_score"):
        assert groups[key] == "imaging"
    assert groups["duckdb_catalog"] == groups["table_maintenance"] == "sql"


def test_every_table_asset_has_schema_key_and_row_checks(graph: dg.AssetGraph) -> None:
    checks: dict[str, set[str]] = {}
    for check in graph.asset_check_keys:
        checks.setdefault(check.asset_key.to_user_string(), set()).add(check.name)
    tables = {k.to_user_string() for k in graph.get_all_asset_keys()} & TABLE_OF.keys()
    assert tables >= {"cells", "genes", "hpa_subcellular", "acquisition_runs", "frames", "objects"}
    for asset in tables:
        table = TABLE_OF[asset]
        expected = {f"{table}_schema", f"{table}_rows"} | (
            {f"{table}_keys_unique"} if lake.TABLES[table].keys else set()
        )
        assert expected <= checks.get(asset, set()), asset
    assert "dataset_genes_ensembl_ids" in checks["genes"]
    assert "hpa_subcellular_ensembl_ids" in checks["hpa_subcellular"]
    assert "frames_fresh" in checks["frames"]
    assert "frames_chunks_exist" in checks["run_qc"]


def test_partitions_sensors_jobs_and_schedules() -> None:
    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string(): graph.get(k).partitions_def for k in graph.get_all_asset_keys()}
    by_partitions = {
        "atlas_datasets": ("soma_experiment", "cells", "genes"),
        "acquisition_runs": ("run_qc", "objects", "policy_score"),
    }
    for name, keys in by_partitions.items():
        for key in keys:
            part = partitioned[key]
            assert isinstance(part, dg.DynamicPartitionsDefinition), key
            assert part.name == name
    assert partitioned["frames"] is None  # fields of view stay rows of `frames`
    for name in ("atlas_drop_sensor", "hpa_drop_sensor", "completed_runs_sensor"):
        assert defs.resolve_sensor_def(name) is not None
    for name in ("atlas_ingest", "hpa_ingest", "imaging_run", "twin_acquisition", "table_maintenance_job"):
        assert defs.resolve_job_def(name) is not None
    assert defs.resolve_schedule_def("table_maintenance_daily").cron_schedule == "0 3 * * *"
