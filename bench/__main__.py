"""``python -m bench [--only NAME] [--quick]``: every benchmark in turn, then bench/REPORT.md."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from types import ModuleType

import psutil
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import bench_acquire, bench_dagster, bench_ingest, bench_models, bench_serving, bench_soak, bench_sql
from bench._common import BENCH_DIR, Config, Result, console, read_results, write_results

MODULES: dict[str, ModuleType] = {
    m.NAME: m for m in (bench_ingest, bench_sql, bench_acquire, bench_models, bench_serving, bench_dagster, bench_soak)
}
REPORT = BENCH_DIR / "REPORT.md"


def _fmt(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _print(results: list[Result]) -> None:
    table = Table("metric", "cellfarm", "peer", "unit", "ratio", "target", "met")
    for r in results:
        met = "[green]yes[/]" if r.met else "[red]no[/]"
        table.add_row(r.metric, _fmt(r.cellfarm), _fmt(r.peer), r.unit, f"{r.ratio:.3f}", r.target, met)
    console.print(table)


def write_report() -> None:
    """REPORT.md from every bench/results/*.json (so ``--only`` refreshes one part)."""
    lines = [
        "# cellfarm benchmarks",
        "",
        f"Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB memory; "
        f"written {datetime.now(UTC).date().isoformat()} by `python -m bench`.",
        "",
        "| metric | cellfarm | peer | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    notes = [
        "Ratios are oriented so that higher is better for speed: cellfarm/peer for cells/s, peer/cellfarm for "
        "query times; for peak memory (each side in its own child process) it is cellfarm/peer, lower is better. "
        "Values are medians.",
        "",
    ]
    for run in read_results():
        quick = " (--quick: smaller sizes)" if run.get("quick") else ""
        reps = max((int(r["details"].get("repeats", 1)) for r in run["results"]), default=0)
        notes.append(f"- `{run['benchmark']}`: run {run['date']}{quick}, median of {reps}.")
        for r in run["results"]:
            peer = r["details"].get("peer", "peer")
            lines.append(
                f"| {r['metric']} ({r['unit']}) | {_fmt(r['cellfarm'])} | {_fmt(r['peer'])} ({peer}) "
                f"| {r['ratio']:.3f} | {r['target']} | {'yes' if r['met'] else 'no'} |"
            )
    REPORT.write_text("\n".join([*lines, "", *notes, ""]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=sorted(MODULES), help="run one benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one repeat: a smoke run")
    args = parser.parse_args(argv)
    cfg = Config(quick=args.quick)
    names = [args.only] if args.only else list(MODULES)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for name in names:
        console.rule(f"bench {name}")
        with Progress(*columns, console=console) as progress:
            results = MODULES[name].run(cfg, progress)
        path = write_results(name, results, config=cfg)
        _print(results)
        console.print(f"wrote {path.relative_to(BENCH_DIR.parent)}")
    write_report()
    console.print(f"wrote {REPORT.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
