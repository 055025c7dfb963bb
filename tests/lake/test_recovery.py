"""A killed ingest leaves nothing visible, and the next ingest recovers and succeeds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import lake
from lake.synthetic import write_perturbseq_h5ad
from tests.conftest import CELLFARM, CXG, need, run_cli

SNAPSHOT = "select (select count(*) from datasets) d, (select count(*) from cells) c, (select count(*) from genes) g"
_ENTRY = re.compile(r"^__(\d+)_(\d+)_")


def _soma_entries_after(soma_uri: str, ts: int) -> list[Path]:
    return [p for p in Path(soma_uri).rglob("__*") if (m := _ENTRY.match(p.name)) and int(m.group(1)) > ts]


def _obs_count(target: lake.Lake) -> int:
    ts = target.committed_soma_timestamp()
    with lake.open_experiment(target.settings.soma_uri, "homo_sapiens", timestamp=ts) as e:
        return int(e.obs.count)


@pytest.fixture(scope="module")
def big_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.h5ad"
    return write_perturbseq_h5ad(path, n_cells=60_000, n_genes=400, density=0.1, seed=5)


def test_sigkill_midway_leaves_nothing_visible_and_next_ingest_recovers(tmp_path: Path, big_h5ad: Path) -> None:
    lake_dir = tmp_path / "lake"
    run_cli("ingest", "atlas", str(need(CXG)), lake_dir=lake_dir, check=True)
    before = run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=lake_dir, check=True).stdout
    target = lake.Lake.open(lake_dir)
    committed = target.committed_soma_timestamp()
    assert committed is not None
    cmd = [str(CELLFARM), "--lake", str(lake_dir), "ingest", "atlas", str(big_h5ad), "--chunk-nnz", "20000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fragments = lake_dir / "soma/census_data/homo_sapiens/ms/RNA/X/raw/__fragments"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_soma_entries_after(str(fragments), committed)) >= 3:  # several X chunks of the new dataset
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _soma_entries_after(target.settings.soma_uri, committed), "the kill should leave uncommitted fragments"

    # Nothing partial is visible: SQL shows what it showed, a SOMA reader sees the committed cells only.
    assert run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=lake_dir, check=True).stdout == before
    assert _obs_count(target) == 2

    # The next ingest recovers (removes the leftovers) and succeeds.
    run_cli("ingest", "atlas", str(big_h5ad), lake_dir=lake_dir, check=True)
    assert lake.query(target, "select count(*) from cells").column(0)[0].as_py() == 60_002
    assert _obs_count(target) == 60_002
    new_ts = target.committed_soma_timestamp()
    assert new_ts is not None
    assert not _soma_entries_after(target.settings.soma_uri, new_ts)
    with lake.open_experiment(target.settings.soma_uri, "homo_sapiens", timestamp=new_ts) as e:
        joinids = e.obs.read(column_names=["soma_joinid"]).concat()["soma_joinid"].to_pylist()
        x = e.ms["RNA"].X["raw"]
        assert x.shape[0] == 60_002
        nnz = x.read().tables().concat().num_rows
    assert joinids == list(range(60_002))
    expected_nnz = lake.query(target, "select sum(nnz) from cells").column(0)[0].as_py()
    assert nnz == expected_nnz


def test_crash_between_delta_rows_and_registry_commit(
    tmp_path: Path, tmp_lake: lake.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after `cells` and `dataset_genes` were appended but before the `datasets` row: invisible."""
    f = write_perturbseq_h5ad(tmp_path / "a.h5ad", n_cells=500, n_genes=50, seed=1)

    def die(self: lake.Lake, row: dict[str, object]) -> bool:
        raise SystemExit("simulated kill before the registry commit")

    monkeypatch.setattr(lake.Lake, "register_dataset", die)
    # Skip the in-process rollback so the state on disk is exactly what a SIGKILL at this point leaves.
    monkeypatch.setattr("lake._recovery.recover_lake", _recover_only_before(lake.recover_lake))
    with pytest.raises(SystemExit):
        lake.ingest_atlas(tmp_lake, f)
    assert tmp_lake.read("cells").num_rows == 500  # the rows are on disk...
    assert lake.query(tmp_lake, "select count(*) from cells").column(0)[0].as_py() == 0  # ...but invisible
    assert lake.query(tmp_lake, "select count(*) from genes").column(0)[0].as_py() == 0
    monkeypatch.undo()
    r = lake.ingest_atlas(tmp_lake, f)
    assert r.status == "ingested"
    assert tmp_lake.read("cells").num_rows == 500  # the orphans were removed, not doubled
    assert lake.query(tmp_lake, "select count(*) from cells").column(0)[0].as_py() == 500
    with lake.open_experiment(tmp_lake.settings.soma_uri, "homo_sapiens", timestamp=r.soma_timestamp) as e:
        assert e.obs.count == 500


def _recover_only_before(real):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def recover(target: lake.Lake) -> dict[str, int]:
        calls["n"] += 1
        return real(target) if calls["n"] == 1 else {}

    return recover


def test_failed_ingest_rolls_back_in_process(tmp_path: Path, tmp_lake: lake.Lake) -> None:
    """Bad values found midway (after some chunks were written) leave the lake as it was."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    x = np.ones((50_000, 5), dtype=np.float32)
    x[45_000, 2] = 0.5  # past the head that validation samples up front
    a = ad.AnnData(X=sp.csr_matrix(x))
    a.var_names = ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618", "ENSG00000146648", "ENSG00000157764"]
    a.obs_names = [f"c{i}" for i in range(50_000)]
    a.write_h5ad(tmp_path / "late.h5ad")
    with pytest.raises(lake.InvalidInputError, match="rows 40000-50000 hold non-integer"):
        lake.ingest_atlas(tmp_lake, tmp_path / "late.h5ad", chunk_nnz=50_000)
    assert tmp_lake.read("cells").num_rows == 0
    assert not Path(tmp_lake.settings.soma_uri).exists()
