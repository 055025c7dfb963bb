"""The `cellfarm` command line as users run it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import GENE_REF, PAPALEXI, need, run_cli


def test_help_lists_the_commands() -> None:
    out = run_cli("--help", check=True).stdout
    for command in ("ingest", "sql", "catalog", "demo"):
        assert command in out


def test_ingest_reports_and_second_run_is_unchanged(tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"
    args = ("ingest", "atlas", str(need(PAPALEXI)), "--gene-reference", str(need(GENE_REF)), "--name", "pap")
    first = run_cli(*args, lake_dir=lake_dir, check=True)
    assert first.stderr.startswith("ingested: dataset_id=")
    assert "n_obs=20729" in first.stderr
    second = run_cli(*args, lake_dir=lake_dir, check=True)
    assert second.stderr.startswith("unchanged:")
