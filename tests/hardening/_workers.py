"""What the hardening tests' child processes run: Delta appends and atlas ingests in a loop, each journaling what
it committed *after* the commit returned, so that the journal is a lower bound of what the lake must hold.

The children are forked from a forkserver that has imported this module (and so the lake) once: a fresh
interpreter per child would spend seconds on imports, and the tests start dozens of them. Journal lines are
flushed one by one, so a SIGKILL loses none that were written.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

import lake
from lake.synthetic import write_perturbseq_h5ad

__all__ = ["append_batches", "batch", "ingest_atlases", "read_journal"]


def batch(run_id: str, seq: int, rows: int) -> pa.Table:
    """Batch `seq` of `run_id`: frame ids `seq*rows ...`, every row tagged with its batch (`t`)."""
    ids = pa.array(range(seq * rows, (seq + 1) * rows), pa.int64())
    return pa.table(
        {
            "run_id": pa.array([run_id] * rows),
            "frame_id": ids,
            "t": pa.array([seq] * rows, pa.int32()),
            "mean": pa.array([float(seq)] * rows),
            "channel": pa.array([f"batch-{seq}"] * rows),
        }
    )


def append_batches(
    root: str, journal: str, run_id: str, *, first_seq: int = 0, rows: int = 64, pause_s: float = 0.0, until: float
) -> None:
    """Append batches to `frames` through `Lake.append` (the sink's path) until the wall clock passes `until`.

    Journal: ``begin SEQ`` before each append, ``commit SEQ ROWS`` once it returned.
    """
    target = lake.Lake.open(root, create=False)
    seq = first_seq
    with open(journal, "a") as log:
        while time.time() < until:
            log.write(f"begin {seq}\n")
            log.flush()
            target.append("frames", batch(run_id, seq, rows))
            log.write(f"commit {seq} {rows}\n")
            log.flush()
            seq += 1
            if pause_s:
                time.sleep(pause_s)


def ingest_atlases(
    root: str, journal: str, prefix: str, *, workdir: str, seed: int, until: float, n_cells: int, n_genes: int
) -> None:
    """Ingest generated Perturb-seq files (a new seed each) one after the other until `until`.

    Journal: ``commit NAME N_OBS DATASET_ID`` once `ingest_atlas` returned.
    """
    target = lake.Lake.open(root, create=False)
    k = 0
    with open(journal, "a") as log:
        while time.time() < until:
            name = f"{prefix}-{k}"
            path = write_perturbseq_h5ad(
                Path(workdir) / f"{name}.h5ad", n_cells=n_cells, n_genes=n_genes, seed=seed + k
            )
            out = lake.ingest_atlas(target, path, name=name)
            log.write(f"commit {name} {out.n_obs} {out.dataset_id} {out.status}\n")
            log.flush()
            k += 1


def read_journal(path: Path) -> tuple[list[list[str]], str | None]:
    """The journal's ``commit`` lines (split) and the last ``begin`` without its commit (None when none)."""
    commits: list[list[str]] = []
    pending: str | None = None
    if not path.exists():
        return commits, pending
    for line in path.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "begin":
            pending = rest[0]
        elif kind == "commit":
            commits.append(rest)
            pending = None
    return commits, pending
