"""``cellfarm demo``: the whole loop on embedded defaults.

1. ingest the Perturb-seq atlas and HPA (the shared data, else a simulated Perturb-seq with known effects);
2. train every model kind on a local Ray, evaluate with cell-eval against the baselines, promote the best that
   passes the gate; train the mitosis CNN on the digital twin and promote it past its own gate;
3. start the BentoML services on 127.0.0.1;
4. run a farm of twin microscopes with the `remote` policy, streaming into the lake;
5. run the smart-microscopy policy experiment;
6. print what an analyst queries next and write the report (`.cellfarm/report/index.html`).

It stops what it started, and a second run on the same lake reuses what the first one made (ingest and
trained models are no-ops; the experiment's rows are upserted by experiment id).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console

import lake
from cellfarm._progress import RichProgress

__all__ = ["DemoSize", "find_shared_data", "run_demo"]

ENV_SHARED_DATA = "CELLFARM_SHARED_DATA"
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
HPA = "hpa/proteinatlas_subcellular_location.tsv"
GENE_REFERENCE = "reference/cxg_schema_genes_homo_sapiens.csv.gz"
DATASET = "papalexi2021"
FARM_ID = "twin-farm"

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
    "models against the control-mean baseline (cell-eval, held-out perturbations)": (
        "SELECT name, version, stage, round(json_extract(metrics, '$.evaluation.gate.margin')::DOUBLE, 4) AS margin, "
        "json_extract(metrics, '$.evaluation.gate.passed')::BOOLEAN AS passed FROM models "
        "WHERE kind <> 'mitosis-cnn' ORDER BY margin DESC NULLS LAST"
    ),
    "the farm: frames and served decisions per microscope": (
        "SELECT r.microscope_id, count(DISTINCT f.frame_id) AS frames, count(DISTINCT d.frame_id) AS decided, "
        "any_value(d.model || ':' || d.model_version) AS model, round(quantile_cont(d.latency_ms, 0.99), 1) AS p99_ms "
        "FROM acquisition_runs r JOIN frames f USING (run_id) LEFT JOIN decisions d USING (run_id, frame_id) "
        f"WHERE r.microscope_id LIKE '{FARM_ID}-%' GROUP BY ALL ORDER BY 1"
    ),
    "the policy experiment: divisions caught against light dose": (
        "SELECT policy, count(*) AS seeds, round(avg(capture_fraction), 3) AS captured, "
        "round(avg(light_dose), 1) AS dose, round(avg(cells_harmed), 1) AS harmed, sum(frames) AS frames "
        "FROM policy_runs GROUP BY ALL ORDER BY dose DESC"
    ),
}


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does: the default is the README's `make demo`; `small()` is the end-to-end test's."""

    kinds: tuple[str, ...] | None = None  # None: every kind (`cellfarm train --list`)
    cnn: dict[str, Any] = field(default_factory=dict)  # train_mitosis_model options; {} its defaults
    microscopes: int = 3
    farm_loops: int = 12
    experiment: dict[str, Any] = field(default_factory=dict)  # run_policy_experiment options; {} its defaults

    @classmethod
    def small(cls) -> DemoSize:
        return cls(
            kinds=("control-mean", "perturbation-mean"),
            cnn={"n_frames": 64, "epochs": 8, "n_val_frames": 32},
            microscopes=2,
            farm_loops=3,
            experiment={"seeds": (0,), "config": {"positions": 2, "duration_s": 3.0, "lead_in_s": 1.0}},
        )


def find_shared_data(explicit: Path | None = None) -> Path | None:
    """The shared data folder: the option, ``$CELLFARM_SHARED_DATA``, or ``../shared/data`` beside the repo."""
    candidates = [
        explicit,
        os.environ.get(ENV_SHARED_DATA),
        Path(__file__).resolve().parents[2] / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for c in candidates:
        if c and (Path(c) / PAPALEXI).is_file():
            return Path(c)
    return None


class _Steps:
    """Each step's title printed as a rule, and its wall time kept for the report."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, n: int, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{n}. {title}[/]")
        t0 = time.perf_counter()
        yield
        self.times[title] = time.perf_counter() - t0


def run_demo(
    lake_uri: str | None,
    *,
    data: Path | None,
    console: Console,
    print_table: Callable[[pa.Table], None],
    size: DemoSize | None = None,
    port: int = 3000,
) -> Path:
    """Run the loop; returns the report's path."""
    from cellfarm._demo_models import DEMO_HOLDOUT, train_evaluate_promote, train_imaging_model
    from cellfarm._report import write_report
    from cellfarm._server import background_server

    size = size or DemoSize()
    shared = find_shared_data(data)
    reference = str(shared / GENE_REFERENCE) if shared and (shared / GENE_REFERENCE).is_file() else None
    target = lake.Lake.open(lake_uri, gene_reference=reference)
    home = _home(target)
    step = _Steps(console)
    console.rule(f"[bold]cellfarm demo[/]: lake at {target.root}")

    with step(1, "ingest the atlas and HPA"):
        dataset = _ingest(target, shared, console)
    with step(2, "train, evaluate and promote the models (local Ray)"):
        holdout = DEMO_HOLDOUT if dataset == DATASET else None
        models_step = train_evaluate_promote(target, dataset, holdout=holdout, kinds=size.kinds, console=console)
        imaging = train_imaging_model(
            target, out_dir=home / "artifacts" / "mitosis-cnn", options=size.cnn, console=console
        )
    token = os.environ.get("CELLFARM_API_TOKEN") or secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        with step(3, "serve the promoted models (BentoML on 127.0.0.1)"):
            # pushed first, so it prints after the server has stopped, however the steps below end
            stack.callback(console.print, "stopped the BentoML server", highlight=False)
            log = home / "logs" / "serve.log"
            server = stack.enter_context(background_server(target, token=token, log=log, port=_free(port)))
            console.print(f"serving at {server.url} (log {server.log})", highlight=False)
        os.environ["CELLFARM_API_TOKEN"] = token  # the agent processes' client reads it
        with step(4, f"a farm of {size.microscopes} twin microscopes, remote policy"):
            farm_runs = _farm(target, server.url, size, home, console)
        with step(5, "the smart-microscopy experiment"):
            experiment = _experiment(target, server.url, token, size, home, console)

    for title, sql in QUERIES.items():
        console.rule(title)
        console.print(f'[dim]cellfarm sql "{sql}"[/]', highlight=False)
        print_table(lake.query(target, sql))
    report = write_report(
        target,
        home / "report",
        models_step=models_step,
        imaging=imaging,
        experiment=experiment,
        farm_runs=farm_runs,
        queries=QUERIES,
        step_times=step.times,
    )
    lake_opt = f" --lake {target.root}" if lake_uri else ""
    console.rule("next")
    console.print(
        f"  report:        {report}\n"
        f"  the Dagster UI: make ui   (or cellfarm{lake_opt} ui), then Assets > Materialize all\n"
        f'  SQL:           cellfarm{lake_opt} sql "select * from policy_runs"\n'
        f"  DuckDB CLI:    cellfarm{lake_opt} catalog lake.duckdb && duckdb lake.duckdb\n"
        f"  serve:         cellfarm{lake_opt} serve   (then see README: Serving)",
        highlight=False,
    )
    return report


def _home(target: lake.Lake) -> Path:
    """The demo's own files (report, logs, artifacts): beside a local lake, else `./.cellfarm`."""
    return Path(target.root).parent if target.settings.is_local else Path(".cellfarm").resolve()


def _free(port: int) -> int:
    """`port` when it is free on 127.0.0.1 (a `cellfarm serve` of the user's may hold it), else any free one."""
    for candidate in (port, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise lake.LakeError("no free port on 127.0.0.1")


def _ingest(target: lake.Lake, shared: Path | None, console: Console) -> str:
    if shared is not None:
        atlas, name = shared / PAPALEXI, DATASET
        console.print(f"data: {shared}", highlight=False)
    else:
        from lake.synthetic import write_perturbseq_h5ad

        atlas, name = target.settings.cache_dir / "demo" / "synthetic_perturbseq.h5ad", "synthetic_perturbseq"
        if not atlas.exists():
            write_perturbseq_h5ad(atlas, n_cells=20_000, n_genes=300, n_perturbations=20, seed=7)
        console.print(f"no shared data found: a simulated Perturb-seq with known effects ({atlas})", highlight=False)
    with RichProgress(console) as progress:
        result = lake.ingest_atlas(target, atlas, name=name, progress=progress)
    console.print(f"atlas {result.name}: {result.status} ({result.n_obs:,} cells x {result.n_vars} genes)")
    if shared is not None and (shared / HPA).is_file():
        with RichProgress(console) as progress:
            hpa = lake.ingest_hpa(target, shared / HPA, progress=progress)
        console.print(f"HPA subcellular: {hpa.status} ({hpa.n_rows:,} gene x location rows)")
    return result.name


def _farm(target: lake.Lake, url: str, size: DemoSize, home: Path, console: Console) -> list[str]:
    """Run the farm; the run ids it made."""
    from acquisition import AgentSpec, default_plan
    from cellfarm._acquire import choose_feedback, run_acquire

    plan = home / "demo" / "farm-plan.json"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(default_plan(loops=size.farm_loops, interval_s=1.0).model_dump_json(exclude_unset=True))
    spec = AgentSpec(
        lake_root=target.root,
        microscope_id=FARM_ID,
        plan=str(plan),
        policy="remote",
        feedback=choose_feedback("remote", url, console),
        seed=11,
        twin_options=(("time_scale", 600.0),),
    )
    before = set(target.read("acquisition_runs", columns=["run_id"])["run_id"].to_pylist())
    if not run_acquire(spec, microscopes=size.microscopes, console=console):
        raise lake.LakeError("the demo's farm did not complete: see the lines above")
    runs = target.read("acquisition_runs", columns=["run_id", "microscope_id"]).to_pylist()
    return sorted(r["run_id"] for r in runs if r["run_id"] not in before and r["microscope_id"].startswith(FARM_ID))


def _experiment(target: lake.Lake, url: str, token: str, size: DemoSize, home: Path, console: Console) -> Any:
    from acquisition import ExperimentConfig, RemotePolicy, run_policy_experiment
    from serving.client import FeedbackClient

    def smart() -> RemotePolicy:
        return RemotePolicy(FeedbackClient(url, token=token))

    options = dict(size.experiment)
    config = ExperimentConfig.model_validate(options.pop("config", {}))
    with RichProgress(console) as progress:
        result = run_policy_experiment(
            target,
            smart=smart,
            config=config,
            experiment_id="demo",
            plots_dir=home / "report",
            progress=progress,
            **options,
        )
    console.print(str(result.verdict), highlight=False, soft_wrap=True)
    return result
