"""``cellfarm demo``: the loop on embedded defaults. It ingests the atlases, runs the digital-twin microscope with
the in-process feedback policy, and prints what an analyst can query next; later stages (training, serving)
extend it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from rich.console import Console

import lake
from cellfarm._progress import RichProgress

ENV_SHARED_DATA = "CELLFARM_SHARED_DATA"
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
HPA = "hpa/proteinatlas_subcellular_location.tsv"
GENE_REFERENCE = "reference/cxg_schema_genes_homo_sapiens.csv.gz"

QUERIES = {
    "cells per perturbation": (
        "SELECT perturbation, is_control, count(*) AS cells FROM cells GROUP BY ALL ORDER BY cells DESC LIMIT 8"
    ),
    "where the perturbed genes' proteins live (HPA)": (
        "SELECT c.perturbation, h.location, h.reliability, count(*) AS cells "
        "FROM cells c JOIN genes g ON g.symbol = c.perturbation "
        "JOIN hpa_subcellular h ON h.ensembl_id = g.ensembl_id AND h.is_main "
        "GROUP BY ALL ORDER BY cells DESC LIMIT 8"
    ),
    "datasets": "SELECT name, kind, n_obs, n_vars, counts_source, ingested_at FROM datasets ORDER BY ingested_at",
    "the microscope run: frames per position, and what feedback added": (
        "SELECT f.p, count(*) AS frames, round(avg(f.mean), 1) AS mean, round(avg(f.focus_score), 4) AS focus, "
        "(SELECT count(*) FROM decisions d JOIN frames g USING (run_id, frame_id) "
        "WHERE d.run_id = f.run_id AND g.p = f.p AND d.action = 'revisit') AS revisits "
        "FROM frames f JOIN acquisition_runs r USING (run_id) WHERE r.microscope_id = 'twin-demo' "
        "GROUP BY ALL ORDER BY f.p"
    ),
    "the twin's ground truth: divisions and whether a frame caught them": (
        "SELECT run_id, count(*) AS divisions, count(*) FILTER (WHERE imaged) AS imaged "
        "FROM twin_events WHERE kind = 'division' GROUP BY run_id"
    ),
}


def _acquire(target: lake.Lake, console: Console) -> None:
    """A short time lapse on the digital twin, with the mitosis detector revisiting fields that divide."""
    from acquisition import Agent, MitosisPolicy, default_plan, open_twin
    from acquisition.twin import TwinConfig

    plan = default_plan(loops=10, interval_s=1.0)
    total = sum(1 for _ in plan)
    scope = open_twin(TwinConfig(seed=7, time_scale=600))
    try:
        with RichProgress(console) as progress:
            agent = Agent(
                target,
                scope,
                microscope_id="twin-demo",
                policy=MitosisPolicy(),
                on_frame=lambda i: progress("acquire", i + 1, total),
            )
            run = agent.run(plan)
    finally:
        scope.close()
    twin = run.summary.get("twin", {})
    console.print(
        f"acquisition {run.run_id}: {run.status}, {run.n_frames} frames ({run.summary['events_injected']} time "
        f"points added by feedback), divisions imaged {twin.get('divisions_imaged')}/{twin.get('divisions')}",
        highlight=False,
    )


def find_shared_data(explicit: Path | None = None) -> Path | None:
    """The shared data folder: the option, ``$CELLFARM_SHARED_DATA``, or ``../shared/data`` beside the repo."""
    candidates = [
        explicit,
        os.environ.get(ENV_SHARED_DATA),
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ]
    candidates.append(Path.cwd().parent / "shared" / "data")
    for c in candidates:
        if c and (Path(c) / PAPALEXI).is_file():
            return Path(c)
    return None


def run_demo(
    lake_uri: str | None,
    *,
    data: Path | None,
    console: Console,
    print_table: Callable[[pa.Table], None],
) -> None:
    shared = find_shared_data(data)
    reference = str(shared / GENE_REFERENCE) if shared and (shared / GENE_REFERENCE).is_file() else None
    target = lake.Lake.open(lake_uri, gene_reference=reference)
    console.rule(f"[bold]cellfarm demo[/]: lake at {target.root}")
    if shared is not None:
        atlas = shared / PAPALEXI
        console.print(f"data: {shared}")
    else:
        from lake.synthetic import write_perturbseq_h5ad

        atlas = target.settings.cache_dir / "demo" / "synthetic_perturbseq.h5ad"
        if not atlas.exists():
            write_perturbseq_h5ad(atlas, n_cells=20_000, n_genes=300, n_perturbations=20, seed=7)
        console.print(f"no shared data found: using a simulated Perturb-seq with known effects ({atlas})")
    with RichProgress(console) as progress:
        result = lake.ingest_atlas(target, atlas, name="papalexi2021" if shared else None, progress=progress)
    console.print(f"atlas {result.name}: {result.status} ({result.n_obs:,} cells x {result.n_vars} genes)")
    if shared is not None and (shared / HPA).is_file():
        with RichProgress(console) as progress:
            hpa = lake.ingest_hpa(target, shared / HPA, progress=progress)
        console.print(f"HPA subcellular: {hpa.status} ({hpa.n_rows:,} gene x location rows)")
    _acquire(target, console)
    for title, sql in QUERIES.items():
        console.rule(title)
        console.print(f'[dim]cellfarm sql "{sql}"[/]', highlight=False)
        print_table(lake.query(target, sql))
    lake_opt = f" --lake {target.root}" if lake_uri else ""
    console.rule("next")
    console.print(
        f'  cellfarm{lake_opt} sql "select * from genes limit 5"\n'
        f"  cellfarm{lake_opt} catalog lake.duckdb && duckdb lake.duckdb   # the DuckDB CLI\n"
        '  python -c "import lake; print(lake.Lake.open().datasets())"',
        highlight=False,
    )
