"""Concurrency: 8 writers appending to `frames` and 2 ingests into the SOMA census at once, for a minute.

Each writer is its own process appending 64-row micro-batches through `Lake.append` at most twice a second (as an
acquisition agent's sink does); each ingest process ingests generated Perturb-seq files one after the other. All
journal what they committed after the commit returned. Then: every journaled commit is in the lake exactly once,
and nothing else is; every dataset is registered with all its cells in `cells` and in SOMA.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

import lake
from tests.hardening._workers import append_batches, ingest_atlases, read_journal

DURATION_S = 60.0  # the minute; the test takes this plus ~5 s (setup, the last ingest, checks)
WRITERS = 8
INGESTS = 2
BATCH_ROWS = 64  # the sink's micro-batch (LakeSink.flush_frames)
PAUSE_S = 0.5  # the sink's shortest interval between commits (LakeSink.min_flush_interval_s)
CELLS, GENES = 2_000, 200


@pytest.mark.slow
def test_eight_writers_and_two_ingests_at_once(tmp_path: Path, children: Any) -> None:
    target = lake.Lake.open(tmp_path / "lake")
    root = str(target.root)
    runs = [f"writer-{w}" for w in range(WRITERS)]
    # the writers' runs are registered first, as an agent's are, so that SQL shows their frames while they stream
    target.merge(
        "acquisition_runs", [{"run_id": r, "microscope_id": r, "status": "running"} for r in runs], mode="insert"
    )
    until = time.time() + DURATION_S
    procs = [
        children(append_batches, root, str(tmp_path / f"{r}.txt"), r, rows=BATCH_ROWS, pause_s=PAUSE_S, until=until)
        for r in runs
    ]
    for k in range(INGESTS):
        work = tmp_path / f"ingest-{k}"
        work.mkdir()
        journal = str(tmp_path / f"ingest-{k}.txt")
        options = {"workdir": str(work), "seed": 1000 * k, "until": until, "n_cells": CELLS, "n_genes": GENES}
        procs.append(children(ingest_atlases, root, journal, f"atlas-{k}", **options))
    for proc in procs:
        proc.join(timeout=DURATION_S + 120)
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"

    # frames: each writer's batches are all there, once, in order; nothing else is
    frames = target.read("frames", columns=["run_id", "frame_id"])
    sent = 0
    commits = 0
    for r in runs:
        journal, pending = read_journal(tmp_path / f"{r}.txt")
        assert pending is None
        n = sum(int(c[1]) for c in journal)
        mine = frames.filter(pc.equal(frames["run_id"], r))["frame_id"].to_pylist()
        assert sorted(mine) == list(range(n)), f"{r}: {len(mine)} rows in the lake, {n} sent"
        sent += n
        commits += len(journal)
    assert frames.num_rows == sent
    sql = "SELECT count(*) AS n, count(DISTINCT run_id || ':' || frame_id) AS k FROM frames"
    assert lake.query(target, sql).to_pylist() == [{"n": sent, "k": sent}]
    writes = Counter(h.get("operation") for h in target.table("frames").history())
    assert writes["WRITE"] == commits  # one Delta commit per append: none lost, none doubled

    # atlases: every ingest that returned is registered, its cells are in `cells` and in SOMA, and only those
    ingested = [c for k in range(INGESTS) for c in read_journal(tmp_path / f"ingest-{k}.txt")[0]]
    assert {c[0].split("-")[1] for c in ingested} == {str(k) for k in range(INGESTS)}  # both ingested, at once
    datasets = {r["name"]: r for r in target.read("datasets").to_pylist()}
    assert sorted(datasets) == sorted(c[0] for c in ingested)
    expected = {c[2]: int(c[1]) for c in ingested}
    assert all(c[3] == "ingested" for c in ingested)
    cells = Counter(target.read("cells", columns=["dataset_id"])["dataset_id"].to_pylist())
    assert dict(cells) == expected
    assert lake.query(target, "SELECT count(*) AS n FROM cells").to_pylist() == [{"n": sum(expected.values())}]
    ts = target.committed_soma_timestamp()
    with lake.open_experiment(target.settings.soma_uri, "homo_sapiens", timestamp=ts) as exp:
        obs = exp.obs.read(column_names=["soma_joinid", "dataset_id"]).concat()
    assert dict(Counter(obs["dataset_id"].to_pylist())) == expected
    assert sorted(obs["soma_joinid"].to_pylist()) == list(range(sum(expected.values())))
    print(
        f"\n{WRITERS} writers: {commits} commits, {sent} rows; {len(ingested)} atlases ingested "
        f"({sum(expected.values())} cells) in {DURATION_S:.0f} s"
    )
