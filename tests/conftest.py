"""Shared fixtures: the real data beside the project, fresh lakes, and the real `cellfarm` executable."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import lake

if TYPE_CHECKING:
    from tests.s3 import S3

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFARM_SHARED_DATA") or ROOT.parent / "shared" / "data")
PAPALEXI = SHARED / "singlecell" / "papalexi2021_thp1_sceptre_subset.h5ad"
PBMC = SHARED / "singlecell" / "scanpy_10x_pbmc68k_reduced.h5ad"
CXG = SHARED / "singlecell" / "cxg_example_valid.h5ad"
HPA = SHARED / "hpa" / "proteinatlas_subcellular_location.tsv"
GENE_REF = SHARED / "reference" / "cxg_schema_genes_homo_sapiens.csv.gz"
CELLFARM = Path(sys.executable).parent / "cellfarm"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two xdist workers on two cores: one compute thread for each test process and for what it
    # starts (commands, servers), instead of two each taking turns on the same cores. Set before torch loads.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set CELLFARM_SHARED_DATA or place shared/ beside the repo)")
    return path


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def tmp_lake(lake_dir: Path) -> lake.Lake:
    return lake.Lake.open(lake_dir)


@pytest.fixture(scope="session")
def papalexi_lake(tmp_path_factory: pytest.TempPathFactory) -> lake.Lake:
    """One lake with the Papalexi Perturb-seq and the HPA table, shared by read-only tests.

    Built once per `pytest` run: the first xdist worker to get here ingests it under a file lock in the run's
    shared temp folder, and the other opens it (an ingest is ~15 s of a worker's time on this box).
    """
    for path in (PAPALEXI, HPA, GENE_REF):
        need(path)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "papalexi" / "lake", shared / "papalexi" / "ingested"
    root.parent.mkdir(parents=True, exist_ok=True)
    with (shared / "papalexi.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        target = lake.Lake.open(root, gene_reference=str(GENE_REF))
        if not done.exists():
            lake.ingest_atlas(target, PAPALEXI, name="papalexi2021")
            lake.ingest_hpa(target, HPA)
            done.touch()
    return target


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 on a free port of 127.0.0.1, the bucket `tests.s3.BUCKET`, and the AWS variables pointing at it."""
    from tests.s3 import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def run_cli(
    *args: str, lake_dir: Path | None = None, check: bool = False, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed `cellfarm` console script, as a user would (from `cwd`, else the tests' own)."""
    full_env = {**os.environ, **env}
    full_env.pop("CELLFARM_LAKE", None)
    cmd = [str(CELLFARM)] + (["--lake", str(lake_dir)] if lake_dir else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
