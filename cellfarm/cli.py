"""The ``cellfarm`` command line: one entry point for every job (see DESIGN.md for the contract)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

import lake
from cellfarm._progress import RichProgress

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False)
ingest_app = typer.Typer(no_args_is_help=True, help="Ingest atlases, HPA tables and images into the lake.")
app.add_typer(ingest_app, name="ingest")

out = Console()
err = Console(stderr=True)


class _State:
    lake_uri: str | None = None

    def lake(self, **kwargs: Any) -> lake.Lake:
        return lake.Lake.open(self.lake_uri, **kwargs)


state = _State()


@app.callback()
def _global(
    lake_uri: Annotated[
        str | None,
        typer.Option("--lake", envvar=lake.ENV_LAKE, help=f"Lake root URI [default: {lake.DEFAULT_LAKE}]"),
    ] = None,
) -> None:
    state.lake_uri = lake_uri


def _report(result: object) -> None:
    rows = asdict(result)  # type: ignore[call-overload]
    status = rows.pop("status")
    err.print(f"[bold green]{status}[/]: " + ", ".join(f"{k}={v}" for k, v in rows.items() if v is not None))


@ingest_app.command("atlas")
def ingest_atlas(
    source: Annotated[str, typer.Argument(help="h5ad path or URL (CELLxGENE, HCA, Perturb-seq)")],
    name: Annotated[str | None, typer.Option(help="Dataset name [default: the file name]")] = None,
    organism: Annotated[str, typer.Option(help="Census experiment, e.g. homo_sapiens")] = "homo_sapiens",
    gene_reference: Annotated[
        str | None,
        typer.Option(envvar=lake.ENV_GENE_REFERENCE, help="Gene list (GENCODE CSV) to map symbols to Ensembl"),
    ] = None,
    chunk_nnz: Annotated[int, typer.Option(help="Stored values per write (memory vs. fragments)", hidden=True)] = (
        lake.DEFAULT_CHUNK_NNZ
    ),
) -> None:
    """Validate an h5ad and append it to the SOMA census and the cells/genes tables."""
    target = state.lake(gene_reference=gene_reference)
    with RichProgress(err) as progress:
        result = lake.ingest_atlas(target, source, name=name, organism=organism, progress=progress, chunk_nnz=chunk_nnz)
    _report(result)


@ingest_app.command("hpa")
def ingest_hpa(
    source: Annotated[str, typer.Argument(help="HPA subcellular_location.tsv path or URL")],
) -> None:
    """Ingest the Human Protein Atlas subcellular locations into hpa_subcellular."""
    target = state.lake()
    with RichProgress(err) as progress:
        result = lake.ingest_hpa(target, source, progress=progress)
    _report(result)


@ingest_app.command("images")
def ingest_images(
    source: Annotated[str, typer.Argument(help="OME-TIFF (incl. Micro-Manager MMStack), OME-Zarr, or PNG/TIFF")],
    masks: Annotated[
        list[Path] | None, typer.Option("--masks", help="Label image(s) of the same field: one objects row per label")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name [default: the file name]")] = None,
) -> None:
    """Bring existing images into the image store (OME-Zarr) and the frames/objects tables."""
    from acquisition import ingest_images as _ingest

    target = state.lake()
    with RichProgress(err) as progress:
        result = _ingest(target, source, masks=masks or (), name=name, progress=progress)
    rows = asdict(result)
    skipped = rows.pop("skipped")
    rows.pop("images", None)
    err.print(
        f"[bold green]{'skipped (already ingested)' if skipped else 'ingested'}[/]: "
        + ", ".join(f"{k}={v}" for k, v in rows.items())
    )


class PolicyChoice(StrEnum):
    none = "none"
    local = "local"
    remote = "remote"


@app.command()
def acquire(
    twin: Annotated[bool, typer.Option("--twin", help="The digital-twin microscope (the default)")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="A Micro-Manager configuration (e.g. MMConfig_demo.cfg)")
    ] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="useq-schema MDASequence as YAML or JSON")] = None,
    microscopes: Annotated[int, typer.Option("--microscopes", "-n", help="Agents to run at once (processes)")] = 1,
    policy: Annotated[PolicyChoice, typer.Option(help="Feedback policy")] = PolicyChoice.none,
    policy_url: Annotated[
        str | None, typer.Option(help="Base URL of `cellfarm serve` (--policy remote), e.g. http://127.0.0.1:3000")
    ] = None,
    microscope_id: Annotated[str | None, typer.Option(help="Name of the microscope [default: twin / mm]")] = None,
    seed: Annotated[int, typer.Option(help="The twin's sample seed (agent k gets seed+k)")] = 0,
    detector: Annotated[
        str | None,
        typer.Option(
            help="--policy local's mitosis detector: a registered model (mitosis-cnn:production, mitosis-cnn:3, "
            "mitosis-cnn:latest) or 'classical' [default: the production mitosis-cnn if any, else classical]"
        ),
    ] = None,
) -> None:
    """Run acquisition agents: frames stream into OME-Zarr and the frames table as they are taken."""
    from acquisition import AgentSpec
    from cellfarm._acquire import check_microscopes, choose_detector, choose_feedback, run_acquire

    if twin and config is not None:
        raise lake.InvalidInputError("choose one microscope: --twin or --config, not both")
    check_microscopes(microscopes)
    target = state.lake()
    spec = AgentSpec(
        lake_root=target.root,
        microscope_id=microscope_id or ("mm" if config else "twin"),
        config=str(config) if config else None,
        plan=str(plan) if plan else None,
        policy=policy.value,
        detector=choose_detector(target, policy.value, detector, err),
        feedback=choose_feedback(policy.value, policy_url, err),
        seed=seed,
    )
    if not run_acquire(spec, microscopes=microscopes, console=err):
        raise SystemExit(1)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def print_table(result: pa.Table, fmt: Format = Format.table) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(result.to_pylist(), default=str) + "\n")
    elif fmt is Format.csv:
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(result, sink)
        sys.stdout.write(sink.getvalue().to_pybytes().decode())
    else:
        table = Table(*result.column_names, show_lines=False)
        for row in result.to_pylist():
            table.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        out.print(table)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over every lake table, e.g. 'select * from datasets'")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format")] = Format.table,
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Also run statements that write or change state (COPY TO, ATTACH, CREATE, SET, INSTALL...) and "
            "read files outside the lake [default: read-only]",
        ),
    ] = False,
) -> None:
    """Run DuckDB SQL over every lake table (read-only unless --allow-writes)."""
    print_table(lake.query(state.lake(), query, allow_writes=allow_writes), format)


@app.command()
def catalog(path: Annotated[Path, typer.Argument(help="DuckDB database file to write")]) -> None:
    """Write a DuckDB database of views over the lake, for the DuckDB CLI (`duckdb PATH`)."""
    written = lake.write_catalog(state.lake(), path)
    err.print(f"wrote {written}: open it with `duckdb {written}`")


@app.command()
def train(
    kind: Annotated[str | None, typer.Argument(help="Model kind (see --list)")] = None,
    dataset: Annotated[str | None, typer.Option(help="Atlas dataset name or id in the lake")] = None,
    holdout_perturbations: Annotated[
        str | None, typer.Option(help="Comma-separated perturbations to hold out [default: a seeded fraction]")
    ] = None,
    holdout_fraction: Annotated[float, typer.Option(help="Fraction held out when none are named")] = 0.2,
    split: Annotated[str, typer.Option(help="perturbation | cells | replicate")] = "perturbation",
    workers: Annotated[int, typer.Option(help="Ray Train workers (data parallel) for learned models")] = 1,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="A Ray cluster [default: a local Ray]")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry name [default: the kind]")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (learned models)")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the model")] = 0,
    list_kinds: Annotated[bool, typer.Option("--list", help="Print the trainable kinds, one per line")] = False,
    tune: Annotated[
        bool, typer.Option("--tune", help="First search lr and sizes with Ray Tune (validation split of train)")
    ] = False,
    tune_trials: Annotated[int, typer.Option(help="Trials of the --tune search")] = 4,
) -> None:
    """Train a model on a dataset's training split and register it as a candidate version."""
    from models import kinds
    from models import train as train_model

    if list_kinds:
        for k in kinds():
            out.print(k, highlight=False)
        return
    if kind is None or dataset is None:
        raise lake.InvalidInputError("train needs KIND and --dataset (or --list)")
    if split not in ("perturbation", "cells", "replicate"):
        raise lake.InvalidInputError(f"--split must be perturbation, cells or replicate, not {split!r}")
    holdout = [p.strip() for p in holdout_perturbations.split(",") if p.strip()] if holdout_perturbations else None
    params: dict[str, Any] = {"epochs": epochs} if epochs is not None else {}
    with err.status(f"training {kind} on {dataset}"):
        record = train_model(
            state.lake(),
            kind,
            dataset,
            holdout=holdout,
            fraction=holdout_fraction,
            split=split,  # type: ignore[arg-type]
            seed=seed,
            workers=workers,
            ray_address=ray_address,
            name=name,
            params=params,
            tune=tune,
            tune_trials=tune_trials,
        )
    held = record.trained_on.get("split", {}).get("test_perturbations", [])
    err.print(f"[bold green]registered[/] {record.ref} ({record.kind}); held out: {', '.join(held)}", highlight=False)
    out.print(record.ref, highlight=False)


@app.command()
def evaluate(
    ref: Annotated[str, typer.Argument(metavar="MODEL[:VERSION]", help="A registered model (newest version if none)")],
    baselines: Annotated[
        str | None, typer.Option(help="Comma-separated baselines [default: all; control-mean is always included]")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="A Ray cluster [default: a local Ray]")
    ] = None,
) -> None:
    """Run cell-eval on the model's held-out perturbations, for the model and every baseline, into the lake."""
    from cellfarm._models import print_evaluation
    from models import BASELINES
    from models import evaluate as evaluate_model

    chosen = [b.strip() for b in baselines.split(",") if b.strip()] if baselines else list(BASELINES)
    with RichProgress(err) as progress:
        result = evaluate_model(state.lake(), ref, baselines=chosen, ray_address=ray_address, progress=progress)
    print_evaluation(result, out, err)


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(metavar="MODEL:VERSION", help="The evaluated model version to promote")],
) -> None:
    """Move a model version to production if it beats the control-mean baseline on its held-out perturbations."""
    from models import promote as promote_model

    verdict = promote_model(state.lake(), ref)
    err.print(f"[bold green]promoted[/] {verdict.record.ref} to production: {verdict.explain()}", highlight=False)
    out.print(verdict.record.ref, highlight=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 3000,
) -> None:
    """Serve the production models: VirtualCell (in-silico experiments) and Feedback (microscopes), one port."""
    from serving._cli import serve as run_server

    run_server(state.lake(), host=host, port=port, console=err)


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (cellfarm serve takes 3000)")] = 3001,
    drop: Annotated[
        str | None,
        typer.Option(envvar="CELLFARM_DROP", help="Drop folder the sensors watch (default: drop/ beside the lake)"),
    ] = None,
    dagster_home: Annotated[
        str | None,
        typer.Option(envvar="DAGSTER_HOME", help="Dagster instance folder (default: dagster/ beside the lake)"),
    ] = None,
    seed: Annotated[
        bool, typer.Option(help="Link the shared Perturb-seq and HPA files into an empty drop folder (make ui does)")
    ] = False,
) -> None:
    """The Dagster UI (dagster dev: webserver + daemon) on the lake's assets, until Ctrl-C."""
    from cellfarm._ui import run_ui, ui_places

    places = ui_places(state.lake_uri, drop=drop, dagster_home=dagster_home)
    code = run_ui(places, host=host, port=port, seed=seed, console=err)
    if code:
        raise SystemExit(code)


@app.command()
def demo(
    data: Annotated[
        Path | None, typer.Option(help="Folder of the shared data [default: ../shared/data when present]")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A smaller loop: two model kinds, a short CNN training, 2 microscopes, one seed")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for the BentoML services (another free one if taken)")] = 3000,
) -> None:
    """Run the whole loop on embedded defaults: ingest, train and promote, serve, a twin farm, the experiment."""
    from cellfarm._demo import DemoSize, run_demo

    size = DemoSize.small() if quick else DemoSize()
    run_demo(state.lake_uri, data=data, console=err, print_table=print_table, size=size, port=port)


def main() -> None:
    """Console-script entry point: lake errors print one line and exit 1, never a traceback."""
    _exit(_run())


def _run() -> int | str | None:
    try:
        app()
    except SystemExit as e:
        return e.code
    except lake.LakeError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        return 130
    except Exception as e:
        from models import ModelError

        if not isinstance(e, ModelError):
            raise
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 1
    return 0


def _exit(code: int | str | None) -> None:
    """Exit after the atexit hooks (Ray shutdown, temp files) but before C++ static destructors run.

    TileDB's and torch's thread pools can abort the process while they are torn down (CI saw
    ``terminate called without an active exception`` and SIGABRT after a clean one-line error), which
    turned a correct exit status into -6. Everything the command wrote is committed by then.
    """
    import atexit
    import contextlib
    import os

    if isinstance(code, str):
        err.print(code, highlight=False, soft_wrap=True)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code or 0)
