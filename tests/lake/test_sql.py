"""The SQL layer: views over Delta, the CLI formats, and a catalog the DuckDB CLI opens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lake
from tests.conftest import run_cli

GROUPS = "select perturbation, count(*) as n from cells group by 1 order by 2 desc, 1"


def test_every_table_is_a_view(papalexi_lake: lake.Lake) -> None:
    con = lake.connect(papalexi_lake)
    views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
    assert views >= set(lake.TABLES) | {"genes"}
    assert con.execute("select count(*) from frames").fetchone() == (0,)  # empty tables are queryable


def test_cli_formats_agree(papalexi_lake: lake.Lake) -> None:
    rows = json.loads(run_cli("sql", GROUPS, "--format", "json", lake_dir=Path(papalexi_lake.root), check=True).stdout)
    assert rows[0] == {"perturbation": None, "n": 2386}
    assert len(rows) == 26
    csv = run_cli("sql", GROUPS, "--format", "csv", lake_dir=Path(papalexi_lake.root), check=True).stdout.splitlines()
    assert csv[0] == '"perturbation","n"'
    assert csv[1] == ",2386"
    assert len(csv) == 27
    table = run_cli("sql", GROUPS, lake_dir=Path(papalexi_lake.root), check=True).stdout
    assert "IFNGR1" in table
    assert "1341" in table


def test_lake_from_environment(papalexi_lake: lake.Lake) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "cellfarm"), "sql", "select count(*) as n from cells", "-f", "json"],
        capture_output=True,
        text=True,
        env={"CELLFARM_LAKE": papalexi_lake.root, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert json.loads(proc.stdout) == [{"n": 20729}]


def test_duckdb_cli_opens_the_catalog(papalexi_lake: lake.Lake, tmp_path: Path) -> None:
    path = tmp_path / "lake.duckdb"
    run_cli("catalog", str(path), lake_dir=Path(papalexi_lake.root), check=True, HOME=str(tmp_path))
    duckdb_cli = Path(sys.executable).parent / "duckdb"
    proc = subprocess.run(
        [str(duckdb_cli), "-readonly", "-csv", str(path), "-c", GROUPS],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},  # no network: the extension was installed from the wheel
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "perturbation,n"
    assert lines[1] == "NULL,2386"
    assert len(lines) == 27
    assert any(line == "IFNGR1,1341" for line in lines)


def test_hpa_table_and_join_with_genes(papalexi_lake: lake.Lake) -> None:
    hpa = lake.query(
        papalexi_lake, "select location_kind, count(*) n, count(distinct ensembl_id) g from hpa_subcellular group by 1"
    ).to_pylist()
    by_kind = {r["location_kind"]: r for r in hpa}
    assert by_kind["main"]["g"] > 12_000
    assert by_kind["additional"]["n"] > 5_000
    tspan6 = lake.query(
        papalexi_lake,
        "select location, is_main, go_id, location_reliability from hpa_subcellular where symbol = 'TSPAN6' order by 1",
    ).to_pylist()
    assert tspan6 == [
        {"location": "Cell Junctions", "is_main": True, "go_id": "GO:0030054", "location_reliability": "Approved"},
        {"location": "Cytosol", "is_main": True, "go_id": "GO:0005829", "location_reliability": "Approved"},
        {
            "location": "Nucleoli fibrillar center",
            "is_main": False,
            "go_id": "GO:0001650",
            "location_reliability": "Approved",
        },
    ]
    joined = lake.query(
        papalexi_lake,
        "select count(distinct g.ensembl_id) from genes g join hpa_subcellular h using (ensembl_id) where g.is_mapped",
    ).column(0)[0]
    assert 0 < joined.as_py() <= 299


def test_hpa_reingest_is_a_noop_and_a_new_release_replaces(papalexi_lake: lake.Lake, tmp_path: Path) -> None:
    from tests.conftest import HPA

    assert lake.ingest_hpa(papalexi_lake, HPA).status == "unchanged"
    release = tmp_path / "hpa2.tsv"
    lines = HPA.read_text().splitlines()
    release.write_text("\n".join(lines[:101]) + "\n")  # a smaller "newer release": header + 100 genes
    scratch = lake.Lake.open(tmp_path / "lake")
    lake.ingest_hpa(scratch, HPA)
    lake.ingest_hpa(scratch, release)
    genes = lake.query(scratch, "select count(distinct ensembl_id) from hpa_subcellular").column(0)[0].as_py()
    assert genes == 100
    assert scratch.read("hpa_subcellular").num_rows > 20_000  # the older release stays for time travel
