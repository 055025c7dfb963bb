"""Atlas ingest: cellfarm's ``ingest_atlas`` vs the bare ``tiledbsoma.io.from_h5ad`` (cells/s, peak RSS).

Each measurement runs in its own child process with a fresh target directory, so peak memory is per side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench._common import (
    WORK,
    Config,
    Measurement,
    Result,
    check,
    console,
    gene_reference,
    median,
    run_child,
    scratch_dir,
    shared_data,
)

NAME = "ingest"
PEER = "tiledbsoma.io.from_h5ad"
SPEED_TARGET = ">= 0.85"
MEMORY_TARGET = "<= 1.2"
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"


def synthetic_file(n_cells: int) -> Path:
    """The generated Perturb-seq file, cached in bench/.work/ (written once per size)."""
    from lake.synthetic import write_perturbseq_h5ad

    path = WORK / f"synthetic-{n_cells}.h5ad"
    if not path.is_file():
        tmp = path.with_suffix(".tmp.h5ad")
        write_perturbseq_h5ad(tmp, n_cells=n_cells, n_genes=2000, n_perturbations=50, density=0.05, seed=1)
        tmp.replace(path)
    return path


def _measure_cellfarm(path: Path, ref: Path | None) -> Measurement:
    with scratch_dir("lake") as lake_dir:
        return run_child("cellfarm-ingest", str(path), str(lake_dir), str(ref) if ref else "")


def _measure_peer(path: Path) -> Measurement:
    with scratch_dir("soma") as exp_dir:
        return run_child("soma-from-h5ad", str(path), str(exp_dir))


def _n_cells(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        enc = f["obs"].attrs.get("_index", "_index")
        return int(f["obs"][enc].shape[0])


def compare(label: str, path: Path, cfg: Config, progress: Progress, *, ref: Path | None = None) -> list[Result]:
    """Alternate cellfarm and peer runs (so drift hits both) and compare medians.

    ``ref`` is the gene reference, for files whose var ids are symbols (the generated file has Ensembl-like
    ids that are in no reference, so it is ingested without one).
    """
    n_cells = _n_cells(path)
    task = progress.add_task(f"ingest {label}", total=2 * cfg.repeats)
    ours: list[Measurement] = []
    theirs: list[Measurement] = []
    for _ in range(cfg.repeats):
        ours.append(_measure_cellfarm(path, ref))
        progress.advance(task)
        theirs.append(_measure_peer(path))
        progress.advance(task)
    cf_s, peer_s = median([m.section_s for m in ours]), median([m.section_s for m in theirs])
    cf_mem, peer_mem = median([m.peak_rss_mib for m in ours]), median([m.peak_rss_mib for m in theirs])
    common: dict[str, Any] = {
        "file": str(path),
        "n_cells": n_cells,
        "gene_reference": str(ref) if ref else None,
        "peer": PEER,
        "repeats": cfg.repeats,
    }
    speed_ratio = (n_cells / cf_s) / (n_cells / peer_s)
    mem_ratio = cf_mem / peer_mem
    speed = Result(
        metric=f"ingest {label}: throughput",
        cellfarm=round(n_cells / cf_s, 1),
        peer=round(n_cells / peer_s, 1),
        ratio=round(speed_ratio, 3),
        target=SPEED_TARGET,
        met=check(speed_ratio, SPEED_TARGET),
        unit="cells/s",
        details=common
        | {
            "cellfarm_seconds": [round(m.section_s, 3) for m in ours],
            "peer_seconds": [round(m.section_s, 3) for m in theirs],
            "cellfarm_process_wall_seconds": [round(m.wall_s, 3) for m in ours],
            "peer_process_wall_seconds": [round(m.wall_s, 3) for m in theirs],
        },
    )
    memory = Result(
        metric=f"ingest {label}: peak memory",
        cellfarm=round(cf_mem, 1),
        peer=round(peer_mem, 1),
        ratio=round(mem_ratio, 3),
        target=MEMORY_TARGET,
        met=check(mem_ratio, MEMORY_TARGET),
        unit="MiB peak RSS",
        details=common
        | {
            "cellfarm_peak_mib": [round(m.peak_rss_mib, 1) for m in ours],
            "peer_peak_mib": [round(m.peak_rss_mib, 1) for m in theirs],
            "cellfarm_rss_after_imports_mib": [round(m.base_rss_mib, 1) for m in ours],
            "peer_rss_after_imports_mib": [round(m.base_rss_mib, 1) for m in theirs],
        },
    )
    return [speed, memory]


def run(cfg: Config, progress: Progress) -> list[Result]:
    results: list[Result] = []
    data = shared_data()
    papalexi = data / PAPALEXI if data else None
    if papalexi is None or not papalexi.is_file():
        console.print(f"[yellow]skip[/] ingest papalexi: {PAPALEXI} not found (set CELLFARM_SHARED_DATA)")
    else:
        results += compare("papalexi 20,729 cells", papalexi, cfg, progress, ref=gene_reference())
    n_cells = 20_000 if cfg.quick else 200_000
    task = progress.add_task(f"generate synthetic {n_cells:,} cells", total=1)
    path = synthetic_file(n_cells)
    progress.advance(task)
    results += compare(f"synthetic {n_cells:,} cells", path, cfg, progress)
    return results
