"""SQL: ``lake.query`` (what ``cellfarm sql`` runs, DuckDB over Delta views) vs DuckDB ``read_parquet``.

Both run in this process over the same Parquet files of a generated ``frames`` Delta table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.progress import Progress

from bench._common import WORK, Config, Result, check, median

NAME = "sql"
PEER = "duckdb read_parquet"
TARGET = ">= 0.8"
BATCH = 1_000_000
RUNS = 5
SQL = (
    "SELECT channel, count(*) AS n, avg(mean) AS avg_mean, max(max) AS max_max FROM frames "
    "WHERE exposure_ms > 50 AND p < 20 GROUP BY channel ORDER BY channel"
)
CHANNELS = np.array(["DAPI", "FITC", "TRITC", "Cy5"], dtype=object)
RUN_IDS = np.array([f"run-{i:03d}" for i in range(50)], dtype=object)


def _batch(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    frame_id = np.arange(start, start + n, dtype=np.int64)
    return pa.table(
        {
            "run_id": pa.array(RUN_IDS[rng.integers(0, len(RUN_IDS), n)], pa.string()),
            "frame_id": frame_id,
            "t": pa.array(rng.integers(0, 100, n, dtype=np.int32)),
            "p": pa.array(rng.integers(0, 96, n, dtype=np.int32)),
            "c": pa.array(rng.integers(0, 4, n, dtype=np.int32)),
            "z": pa.array(rng.integers(0, 10, n, dtype=np.int32)),
            "x_um": rng.uniform(0, 10_000, n),
            "y_um": rng.uniform(0, 10_000, n),
            "channel": pa.array(CHANNELS[rng.integers(0, len(CHANNELS), n)], pa.string()),
            "exposure_ms": rng.choice(np.array([10.0, 20.0, 50.0, 100.0, 200.0]), n),
            "light_power": rng.uniform(0, 100, n),
            "mean": rng.gamma(2.0, 300.0, n),
            "max": rng.uniform(1_000, 65_535, n),
            "saturated_frac": rng.uniform(0, 0.01, n),
            "focus_score": rng.normal(1.0, 0.2, n),
        }
    )


def build_lake(n_rows: int, progress: Progress) -> Any:
    """The lake with ``n_rows`` frames, cached in bench/.work/ (a marker file says it is complete)."""
    import shutil

    import lake

    root = WORK / f"sql-lake-{n_rows}"
    done = root / ".bench-complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        lake_obj = lake.Lake.open(root)
        rng = np.random.default_rng(7)
        task = progress.add_task(f"build frames table ({n_rows:,} rows)", total=n_rows)
        for start in range(0, n_rows, BATCH):
            n = min(BATCH, n_rows - start)
            lake_obj.append("frames", _batch(rng, start, n))
            progress.advance(task, n)
        done.write_text(str(n_rows))
    return lake.Lake.open(root)


def _time(fn: Callable[[], pa.Table], runs: int) -> tuple[float, list[float], pa.Table]:
    """(first call's seconds, the next ``runs`` calls' seconds, the result). The first call warms up."""
    t0 = time.perf_counter()
    out = fn()  # warm-up: file cache, extension load, views bound
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, times, out


def run(cfg: Config, progress: Progress) -> list[Result]:
    import duckdb
    from deltalake import DeltaTable

    import lake

    n_rows = 1_000_000 if cfg.quick else 10_000_000
    lake_obj = build_lake(n_rows, progress)
    files = DeltaTable(lake_obj.table_uri("frames")).file_uris()
    listing = "[" + ", ".join("'" + str(Path(f)).replace("'", "''") + "'" for f in files) + "]"
    peer_sql = SQL.replace("FROM frames", f"FROM read_parquet({listing})")

    con = duckdb.connect()  # one connection per process, a cursor per query: as lake.query does

    def peer() -> pa.Table:
        cur = con.cursor()
        try:
            return cur.sql(peer_sql).to_arrow_table()
        finally:
            cur.close()

    task = progress.add_task("sql filtered aggregate", total=2)
    cf_first, cf_times, cf_out = _time(lambda: lake.query(lake_obj, SQL), RUNS)
    progress.advance(task)
    peer_first, peer_times, peer_out = _time(peer, RUNS)
    progress.advance(task)
    con.close()
    cf_s, peer_s = median(cf_times), median(peer_times)
    ratio = peer_s / cf_s
    same = cf_out.select(["channel", "n"]).equals(peer_out.select(["channel", "n"]))
    return [
        Result(
            metric=f"sql filtered aggregate, {n_rows:,} rows",
            cellfarm=round(cf_s * 1000, 1),
            peer=round(peer_s * 1000, 1),
            ratio=round(ratio, 3),
            target=TARGET,
            met=check(ratio, TARGET),
            unit="ms",
            details={
                "sql": SQL,
                "peer": PEER,
                "n_rows": n_rows,
                "n_files": len(files),
                "repeats": RUNS,
                "cellfarm_seconds": [round(t, 4) for t in cf_times],
                "peer_seconds": [round(t, 4) for t in peer_times],
                "cellfarm_first_call_seconds": round(cf_first, 4),
                "peer_first_call_seconds": round(peer_first, 4),
                "same_counts": same,
            },
        )
    ]
