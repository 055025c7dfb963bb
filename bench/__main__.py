"""``python -m bench [--only NAME] [--quick]``: every benchmark in turn, then bench/REPORT.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import bench_acquire, bench_dagster, bench_ingest, bench_models, bench_serving, bench_soak, bench_sql
from bench._common import BENCH_DIR, Config, Result, console, write_results

MODULES: dict[str, ModuleType] = {
    m.NAME: m for m in (bench_ingest, bench_sql, bench_acquire, bench_models, bench_serving, bench_dagster, bench_soak)
}
REPORT = BENCH_DIR / "REPORT.md"


def _fmt(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it."""
    return path.relative_to(BENCH_DIR.parent) if path.is_relative_to(BENCH_DIR.parent) else path


def _print(results: list[Result]) -> None:
    table = Table("metric", "cellfarm", "peer", "unit", "ratio", "target", "met")
    for r in results:
        met = "[green]yes[/]" if r.met else "[red]no[/]"
        table.add_row(r.metric, _fmt(r.cellfarm), _fmt(r.peer), r.unit, f"{r.ratio:.3f}", r.target, met)
    console.print(table)


TABLE_HEAD = ("| metric | cellfarm | peer | ratio | target | met |", "|---|---|---|---|---|---|")
NOTE = (
    "Ratios are oriented so that higher is better for speed: cellfarm/peer for cells/s, peer/cellfarm for query "
    "times; for peak memory (each side in its own child process) it is cellfarm/peer, lower is better. Values are "
    "medians. Each section is rewritten only by a full run of its benchmark (`python -m bench --only NAME`); a "
    "`--quick` smoke run writes `bench/results/quick/` and leaves this page alone."
)


def _section(run: dict[str, Any]) -> str:
    """One benchmark's part of REPORT.md: when and where it ran, then its rows."""
    reps = max((int(r["details"].get("repeats", 1)) for r in run["results"]), default=0)
    lines = [
        f"## {run['benchmark']}",
        "",
        f"Run {run['date']} on {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB memory; "
        f"median of {reps}.",
        "",
        *TABLE_HEAD,
    ]
    for r in run["results"]:
        peer = r["details"].get("peer", "peer")
        lines.append(
            f"| {r['metric']} ({r['unit']}) | {_fmt(r['cellfarm'])} | {_fmt(r['peer'])} ({peer}) "
            f"| {r['ratio']:.3f} | {r['target']} | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def _sections(text: str) -> dict[str, str]:
    """REPORT.md's sections by benchmark name (the text from its `## NAME` up to the next one)."""
    parts = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    return {p.split(None, 2)[1]: p.strip() for p in parts if p.startswith("## ")}


def write_report(ran: dict[str, dict[str, Any]]) -> None:
    """REPORT.md with the sections of the benchmarks in `ran` (name -> results payload) rewritten and every other
    section kept as it was: a run of one benchmark never rewrites another's figures."""
    sections = _sections(REPORT.read_text()) if REPORT.exists() else {}
    sections.update({name: _section(run) for name, run in ran.items()})
    order = [n for n in MODULES if n in sections] + sorted(set(sections) - set(MODULES))
    body = "\n\n".join(sections[n] for n in order)
    REPORT.write_text(f"# cellfarm benchmarks\n\n{NOTE}\n\n{body}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=sorted(MODULES), help="run one benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one repeat: a smoke run")
    args = parser.parse_args(argv)
    cfg = Config(quick=args.quick)
    names = [args.only] if args.only else list(MODULES)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    ran: dict[str, dict[str, Any]] = {}
    for name in names:
        console.rule(f"bench {name}")
        with Progress(*columns, console=console) as progress:
            results = MODULES[name].run(cfg, progress)
        path = write_results(name, results, config=cfg)
        _print(results)
        console.print(f"wrote {_shown(path)}")
        ran[name] = json.loads(path.read_text())
    if cfg.quick:
        console.print(f"--quick: {_shown(REPORT)} left as it was")
    else:
        write_report(ran)
        console.print(f"wrote {_shown(REPORT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
