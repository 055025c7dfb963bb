"""The `cellfarm` command line as users run it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import GENE_REF, PAPALEXI, need, run_cli


def test_help_lists_the_commands() -> None:
    out = run_cli("--help", check=True).stdout
    for command in ("ingest", "sql", "catalog", "demo"):
        assert command in out


def test_demo_ingests_the_shared_data_and_prints_queries(tmp_path: Path) -> None:
    need(PAPALEXI)
    lake_dir = tmp_path / "lake"
    first = run_cli("demo", lake_dir=lake_dir, check=True)
    assert "atlas papalexi2021: ingested (20,729 cells x 299 genes)" in first.stderr
    assert "HPA subcellular: ingested" in first.stderr
    assert "IFNGR1" in first.stdout
    assert "2386" in first.stdout
    again = run_cli("demo", lake_dir=lake_dir, check=True)  # idempotent
    assert "atlas papalexi2021: unchanged" in again.stderr
    rows = run_cli("sql", "select count(*) from datasets", "-f", "csv", lake_dir=lake_dir, check=True).stdout
    assert rows.splitlines()[1] == "2"


def test_ingest_reports_and_second_run_is_unchanged(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    args = ("ingest", "atlas", str(need(PAPALEXI)), "--gene-reference", str(need(GENE_REF)), "--name", "pap")
    first = run_cli(*args, lake_dir=lake_dir, check=True)
    assert first.stderr.startswith("ingested: dataset_id=")
    assert "n_obs=20729" in first.stderr
    second = run_cli(*args, lake_dir=lake_dir, check=True)
    assert second.stderr.startswith("unchanged:")
