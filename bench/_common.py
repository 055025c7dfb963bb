"""Shared pieces of the benchmarks: child-process measurements, results, JSON output and paths."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

BENCH_DIR = Path(__file__).resolve().parent
WORK = BENCH_DIR / ".work"
RESULTS = BENCH_DIR / "results"
ENV_SHARED = "CELLFARM_SHARED_DATA"
CHILD_TAG = "BENCH-CHILD-RESULT "

console = Console()


@dataclass(frozen=True)
class Config:
    """Run options: ``quick`` shrinks sizes and repeats for a smoke run."""

    quick: bool = False

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 3


@dataclass(frozen=True)
class Measurement:
    """One child run: wall seconds of the process, seconds of its timed section, peak RSS."""

    wall_s: float
    section_s: float
    peak_rss_mib: float
    base_rss_mib: float  # peak RSS just before the timed section (imports, interpreter)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """One compared metric. ``ratio`` is oriented as stated by ``target`` (e.g. ``>= 0.85``)."""

    metric: str
    cellfarm: float
    peer: float
    ratio: float
    target: str
    met: bool
    unit: str
    details: dict[str, Any] = field(default_factory=dict)


def shared_data() -> Path | None:
    """The shared data folder: $CELLFARM_SHARED_DATA, else ``shared/data`` beside the clone."""
    env = os.environ.get(ENV_SHARED)
    path = Path(env) if env else BENCH_DIR.parents[1] / "shared" / "data"
    return path if path.is_dir() else None


def gene_reference() -> Path | None:
    data = shared_data()
    ref = data / "reference" / "cxg_schema_genes_homo_sapiens.csv.gz" if data else None
    return ref if ref is not None and ref.is_file() else None


def start_local_ray(num_cpus: int | None = None) -> bool:
    """A local Ray for a benchmark unless one is up: ``num_cpus`` (default every CPU), no dashboard, the workers'
    logs kept off the progress display. True when started here (the caller then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address="local",  # never a cluster some `ray start` left running
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    return True


def check(ratio: float, target: str) -> bool:
    """Whether ``ratio`` meets a target written as ``">= x"`` or ``"<= x"``."""
    op, value = target.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh, empty, not yet existing directory under bench/.work/tmp, removed afterwards."""
    path = WORK / "tmp" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_child(mode: str, *args: str) -> Measurement:
    """Run ``python -m bench._child MODE ARGS`` in a fresh process; its peak RSS is its own (``VmHWM``)."""
    cmd = [sys.executable, "-m", "bench._child", mode, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH_DIR.parent, check=False)
    wall = time.perf_counter() - t0
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(CHILD_TAG)), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
        raise RuntimeError(f"child {mode} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(line.removeprefix(CHILD_TAG))
    return Measurement(
        wall_s=wall,
        section_s=float(out["section_s"]),
        peak_rss_mib=float(out["peak_kib"]) / 1024,
        base_rss_mib=float(out["base_peak_kib"]) / 1024,
        extra=dict(out.get("extra", {})),
    )


def write_results(name: str, results: list[Result], *, config: Config) -> Path:
    """`bench/results/NAME.json`, or `bench/results/quick/NAME.json` for a `--quick` smoke run."""
    folder = RESULTS / "quick" if config.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": config.quick,
        "repeats": config.repeats,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
