"""Bad input at the CLI door: a one-line error, a non-zero exit, and the lake exactly as it was."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.conftest import CXG, GENE_REF, HPA, PBMC, need, run_cli

SNAPSHOT = (
    "select (select count(*) from datasets) d, (select count(*) from cells) c, "
    "(select count(*) from genes) g, (select count(*) from hpa_subcellular) h"
)
IDS = ["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"]


def _h5ad(path: Path, x: np.ndarray, obs_names: list[str], var_names: list[str] = IDS) -> Path:
    a = ad.AnnData(X=sp.csr_matrix(x), var=pd.DataFrame(index=var_names))
    a.obs_names = obs_names
    a.write_h5ad(path)
    return path


def truncated(tmp: Path) -> tuple[Path, str]:
    data = need(CXG).read_bytes()
    (tmp / "trunc.h5ad").write_bytes(data[: len(data) // 2])
    return tmp / "trunc.h5ad", "not a readable h5ad"


def not_hdf5(tmp: Path) -> tuple[Path, str]:
    (tmp / "text.h5ad").write_text("cell,gene\n1,2\n")
    return tmp / "text.h5ad", "not a readable h5ad (HDF5) file"


def duplicate_cells(tmp: Path) -> tuple[Path, str]:
    return _h5ad(tmp / "dup.h5ad", np.ones((3, 3), np.float32), ["a", "b", "a"]), "duplicate cell id"


def non_counts(tmp: Path) -> tuple[Path, str]:
    return _h5ad(tmp / "norm.h5ad", np.full((3, 3), 0.5, np.float32), ["a", "b", "c"]), "no raw integer counts"


def scaled_pbmc(tmp: Path) -> tuple[Path, str]:
    return need(PBMC), "X holds negative values"


def unmappable_genes(tmp: Path) -> tuple[Path, str]:
    f = _h5ad(tmp / "genes.h5ad", np.ones((3, 3), np.float32), ["a", "b", "c"], ["foo", "bar", "baz"])
    return f, "map to"


def missing_file(tmp: Path) -> tuple[Path, str]:
    return tmp / "nope.h5ad", "no such file"


CASES: list[Callable[[Path], tuple[Path, str]]] = [
    truncated,
    not_hdf5,
    duplicate_cells,
    non_counts,
    scaled_pbmc,
    unmappable_genes,
    missing_file,
]


@pytest.fixture
def seeded_lake(tmp_path: Path) -> Path:
    lake_dir = tmp_path / "lake"
    run_cli("ingest", "atlas", str(need(CXG)), lake_dir=lake_dir, check=True)
    return lake_dir


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_atlas(case: Callable[[Path], tuple[Path, str]], tmp_path: Path, seeded_lake: Path) -> None:
    before = run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=seeded_lake, check=True).stdout
    path, expected = case(tmp_path)
    proc = run_cli("ingest", "atlas", str(path), lake_dir=seeded_lake, CELLFARM_GENE_REFERENCE=str(need(GENE_REF)))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=seeded_lake, check=True).stdout == before


def test_hpa_with_missing_columns(tmp_path: Path, seeded_lake: Path) -> None:
    before = run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=seeded_lake, check=True).stdout
    df = pd.read_csv(need(HPA), sep="\t", nrows=50).drop(columns=["Main location", "Reliability"])
    df.to_csv(tmp_path / "hpa.tsv", sep="\t", index=False)
    proc = run_cli("ingest", "hpa", str(tmp_path / "hpa.tsv"), lake_dir=seeded_lake)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: hpa.tsv is missing HPA column(s): Reliability, Main location"
    assert run_cli("sql", SNAPSHOT, "--format", "csv", lake_dir=seeded_lake, check=True).stdout == before


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root ignores permissions")
def test_lake_path_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cmd = ["ingest", "atlas", str(need(CXG))]
    proc = run_cli(*cmd, lake_dir=ro / "lake") if os.geteuid() != 0 else _as_nobody(cmd, ro / "lake")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"error: lake path {ro / 'lake'} is not writable"), proc.stderr
    assert not (ro / "lake").exists()


def _as_nobody(args: list[str], lake_dir: Path):  # type: ignore[no-untyped-def]
    """As root, drop to nobody so that file permissions apply, like for any lab user."""
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "cellfarm"
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(cli), "--lake", str(lake_dir), *args]
    env = {**os.environ, "HOME": str(lake_dir.parent)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_bad_sql_is_one_line(seeded_lake: Path) -> None:
    proc = run_cli("sql", "select nope from cells", lake_dir=seeded_lake)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: SQL error: Binder Error")
