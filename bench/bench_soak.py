"""Soak: the twin farm with the remote policy for 10 minutes (`--quick`: 1 minute), run as a lab runs it.

`cellfarm serve` (BentoML on 127.0.0.1) serves a lake built here: an atlas with a promoted perturbation-mean (the
server's readiness needs one) and the mitosis CNN trained on twin frames, promoted if it passes its gate (else
the classical detector is served, and the decisions say so). Then `cellfarm acquire --twin --microscopes 3
--policy remote --policy-url ...` runs the demo's plan (three fields, two channels, every second) for the whole
duration, while this process samples the resident memory of every process of the farm (supervisor and agents)
and of the server.

Each figure compares the last window (a minute; 10 s with `--quick`) with the first one, the named peer:
- the plan's frames/s (the runs' `schedule` summaries: frames of planned events, apart from those of the events
  the policy added): target >= 0.9 (the farm keeps its pace); and how late the latest planned event started
  (report);
- all frames/s, from the committed `frames` rows' `acquired_at` (report: the policy's revisits follow the
  sample's divisions, so this rises and falls with the biology, not with the pipeline);
- resident memory of the farm and the server together: target <= 1.1 (no leak);
- the decision latency's p99 (report);
- lost frames: the frames the agents' cameras gave (their runs' summaries) against the `frames` rows and the
  planes on disk; target 0.
A PNG of frames/s and memory over time goes beside the JSON (bench/results/soak.png). Run it alone with
`python -m bench --only soak [--quick]`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.progress import Progress

from bench._common import RESULTS, Config, Result, check, console, gene_reference, scratch_dir, shared_data
from bench.bench_serving import _free_port
from cellfarm._server import running

NAME = "soak"
PEER = "the first window"
MICROSCOPES = 3
ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
CELLFARM = str(Path(sys.executable).parent / "cellfarm")
PLOT = RESULTS / "soak.png"


@dataclass(frozen=True)
class Soak:
    duration_s: float
    window_s: float
    sample_s: float

    @classmethod
    def of(cls, cfg: Config) -> Soak:
        return cls(60.0, 10.0, 2.0) if cfg.quick else cls(600.0, 60.0, 5.0)


@dataclass
class Samples:
    """Resident memory over time, per process group (MiB), sampled by a thread."""

    at: list[float] = field(default_factory=list)
    farm: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    names: dict[str, set[str]] = field(default_factory=lambda: {"farm": set(), "server": set()})  # what was counted


def _build_lake(root: Path, work: Path) -> str:
    """An atlas, a promoted perturbation model and, when it passes its gate, the mitosis CNN; the CNN's name."""
    import lake
    import models
    from cellfarm._demo import DemoSize
    from cellfarm._demo_models import train_imaging_model

    data = shared_data()
    ref = gene_reference()
    target = lake.Lake.open(root, gene_reference=str(ref) if ref else None)
    if data is not None and (data / PAPALEXI).is_file():
        atlas, name = data / PAPALEXI, "papalexi2021"
    else:
        from lake.synthetic import write_perturbseq_h5ad

        atlas, name = write_perturbseq_h5ad(work / "synthetic.h5ad", n_cells=5000, n_genes=300), "synthetic"
    lake.ingest_atlas(target, atlas, name=name)
    models.set_stage(target, models.train(target, "perturbation-mean", name), "production")
    cnn = train_imaging_model(target, out_dir=work / "cnn", options=DemoSize.small().cnn, console=console)
    return cnn.ref if cnn is not None else "the classical detector"


def _tree_rss(pid: int, names: set[str]) -> float:
    """Resident MiB of a process and all its descendants (BentoML's workers run in sessions of their own, so
    the server is found by descent, not by session)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    total += proc.memory_info().rss
                    names.add(" ".join(proc.cmdline()[1:4])[:80])
    return total / 2**20


def _sample(farm: int, server: int, every_s: float, out: Samples, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        f = _tree_rss(farm, out.names["farm"])
        s = _tree_rss(server, out.names["server"])
        out.at.append(time.time())
        out.farm.append(f)
        out.server.append(s)


def _run_farm(
    lake_root: Path, url: str, env: dict[str, str], soak: Soak, work: Path, server: int
) -> tuple[Samples, int]:
    """Run the farm to the end of its plan while sampling memory; the samples and the farm's exit status."""
    from acquisition import default_plan

    plan = work / "plan.json"
    loops = int(soak.duration_s)  # the demo's plan takes a time point a second
    plan.write_text(default_plan(loops=loops, interval_s=1.0).model_dump_json(exclude_unset=True))
    cmd = [CELLFARM, "--lake", str(lake_root), "acquire", "--twin", "--plan", str(plan)]
    cmd += ["--microscopes", str(MICROSCOPES), "--policy", "remote", "--policy-url", url, "--seed", "11"]
    samples, stop = Samples(), threading.Event()
    with (work / "farm.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = threading.Thread(target=_sample, args=(proc.pid, server, soak.sample_s, samples, stop), daemon=True)
    sampler.start()
    try:
        # the plan ends the runs; a farm that falls far behind is stopped as an operator would (Ctrl-C)
        proc.wait(timeout=soak.duration_s * 1.5 + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        stop.set()
        sampler.join()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        console.print(f"[red]the farm exited with {proc.returncode}[/]: {(work / 'farm.log').read_text()[-2000:]}")
    return samples, int(proc.returncode)


@dataclass(frozen=True)
class Windows:
    starts: list[float]  # epoch seconds
    frames_per_s: list[float]
    rss_mib: list[float]  # farm + server, mean of the samples in the window
    farm_mib: list[float]
    server_mib: list[float]
    p99_ms: list[float]


def _windows(frames_at: np.ndarray, decisions: tuple[np.ndarray, np.ndarray], samples: Samples, w: float) -> Windows:
    t0, t_end = float(frames_at.min()), float(frames_at.max())
    n = max(int((t_end - t0) // w), 1)
    at = np.asarray(samples.at)
    farm, server = np.asarray(samples.farm), np.asarray(samples.server)
    decided, latency = decisions
    out: dict[str, list[float]] = {k: [] for k in ("fps", "rss", "farm", "server", "p99")}
    starts = [t0 + k * w for k in range(n)]
    for a in starts:
        inside = (frames_at >= a) & (frames_at < a + w)
        out["fps"].append(float(inside.sum()) / w)
        s = (at >= a) & (at < a + w)
        out["farm"].append(float(farm[s].mean()) if s.any() else float("nan"))
        out["server"].append(float(server[s].mean()) if s.any() else float("nan"))
        out["rss"].append(out["farm"][-1] + out["server"][-1])
        d = (decided >= a) & (decided < a + w)
        out["p99"].append(float(np.percentile(latency[d], 99)) if d.any() else float("nan"))
    return Windows(starts, out["fps"], out["rss"], out["farm"], out["server"], out["p99"])


@dataclass(frozen=True)
class Pace:
    """The plan's pace per window, from the runs' schedules (buckets of each run's own clock, summed over runs)."""

    planned_per_s: list[float]  # frames of the plan's own events
    injected_per_s: list[float]  # frames of the events the feedback policy added
    late_max_ms: list[float]  # the latest start of a planned event


def _pace(schedules: list[dict[str, Any]], w: float, n: int) -> Pace:
    planned, injected, late = np.zeros(n), np.zeros(n), np.zeros(n)
    for sch in schedules:
        per = max(round(w / sch["bucket_s"]), 1)  # buckets per window
        for k in range(n):
            part = slice(k * per, (k + 1) * per)
            planned[k] += sum(sch["planned"][part])
            injected[k] += sum(sch["injected"][part])
            late[k] = max(late[k], max(sch["late_max_ms"][part], default=0.0))
    return Pace([float(v) for v in planned / w], [float(v) for v in injected / w], [float(v) for v in late])


def _accounting(lake_root: Path) -> dict[str, Any]:
    """Frames the agents' cameras gave, `frames` rows, planes on disk (and rows whose plane is missing), per run."""
    import lake

    target = lake.Lake.open(lake_root, create=False)
    runs = lake.query(target, "SELECT run_id, status, n_frames, summary FROM acquisition_runs").to_pylist()
    out: dict[str, Any] = {"runs": {}, "acquired": 0, "rows": 0, "planes": 0, "rows_without_plane": 0}
    out["schedules"] = []
    for run in runs:
        summary = json.loads(run["summary"] or "{}")
        rows = lake.query(target, f"SELECT t, c, z, image_uri FROM frames WHERE run_id = '{run['run_id']}'").to_pylist()
        missing = sum(1 for r in rows if not lake.chunk_exists(r["image_uri"], r["t"], r["c"], r["z"]))
        planes = sum(1 for _ in (lake_root / "images" / run["run_id"]).glob("*/0/c/*/*/*/0/0"))
        per = {
            "status": run["status"],
            "acquired": int(summary.get("frames", 0)),
            "rows": len(rows),
            "planes": planes,
            "rows_without_plane": missing,
            "backpressure_s": summary.get("backpressure_s"),
            "frames_decided": summary.get("frames_decided"),
            "events_injected": summary.get("events_injected"),
            "events_skipped": summary.get("events_skipped"),
        }
        out["runs"][run["run_id"]] = per
        if "schedule" in summary:
            out["schedules"].append(summary["schedule"])
        for k in ("acquired", "rows", "planes", "rows_without_plane"):
            out[k] += per[k]
    out["lost"] = max(out["acquired"] - out["rows"], 0) + out["rows_without_plane"] + abs(out["planes"] - out["rows"])
    return out


def _series(lake_root: Path) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], list[str]]:
    import lake

    target = lake.Lake.open(lake_root, create=False)
    frames = lake.query(target, "SELECT epoch(acquired_at) AS t FROM frames")["t"].to_numpy()
    d = lake.query(target, "SELECT epoch(decided_at) AS t, latency_ms, model, model_version FROM decisions")
    served = sorted({f"{m}:{v}" for m, v in zip(d["model"].to_pylist(), d["model_version"].to_pylist(), strict=True)})
    return frames, (d["t"].to_numpy(), d["latency_ms"].to_numpy()), served


def _plot(win: Windows, pace: Pace, samples: Samples, window_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = win.starts[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    mid = [(a - t0 + window_s / 2) / 60 for a in win.starts]
    top.plot(mid, win.frames_per_s, "o-", label="all frames")
    top.plot(mid, pace.planned_per_s, "s-", label="the plan's frames")
    top.set_ylabel("frames/s (farm)")
    top.legend(loc="lower right")
    top.set_ylim(bottom=0)
    top.set_title(f"soak: {MICROSCOPES} twin microscopes, remote policy")
    at = (np.asarray(samples.at) - t0) / 60
    bottom.plot(at, samples.farm, label="farm (supervisor + agents)")
    bottom.plot(at, samples.server, label="server (cellfarm serve)")
    bottom.set_ylabel("resident memory (MiB)")
    bottom.set_xlabel("minutes since the first frame")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: Config, progress: Progress) -> list[Result]:
    soak = Soak.of(cfg)
    task = progress.add_task(f"soak {soak.duration_s / 60:g} min", total=3)
    with scratch_dir("soak") as work:
        work.mkdir(parents=True)
        lake_root = work / "lake"
        detector = _build_lake(lake_root, work)
        progress.advance(task)
        token = secrets.token_urlsafe(16)
        port = _free_port()
        env = {
            **os.environ,
            "CELLFARM_API_TOKEN": token,
            "CELLFARM_SERVE_TORCH_THREADS": "1",  # two cores shared with the farm (as bench_serving)
            "BENTOML_HOME": str(work / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
        }
        env.pop("CELLFARM_LAKE", None)
        url = f"http://127.0.0.1:{port}"
        cmd = [CELLFARM, "--lake", str(lake_root), "serve", "--port", str(port)]
        with running(cmd, env=env, ready_url=url + "/readyz", log=work / "serve.log", startup_s=300, cwd=ROOT) as srv:
            samples, farm_exit = _run_farm(lake_root, url, env, soak, work, server=srv.pid)
        progress.advance(task)
        frames_at, decisions, served = _series(lake_root)
        if frames_at.size == 0:
            raise RuntimeError(f"the farm committed no frame:\n{(work / 'farm.log').read_text()[-3000:]}")
        win = _windows(frames_at, decisions, samples, soak.window_s)
        acct = {**_accounting(lake_root), "farm_exit_status": farm_exit}
        pace = _pace(acct.pop("schedules"), soak.window_s, len(win.starts))
        counted = {k: sorted(v) for k, v in samples.names.items()}
        _plot(win, pace, samples, soak.window_s, PLOT)
        progress.advance(task)
    return _results(soak, win, pace, acct, served, detector, counted)


def _last_vs_first(what: str, values: list[float], unit: str, target: str, details: dict[str, Any]) -> Result:
    first, last = values[0], values[-1]
    ratio = last / first if first else float("nan")
    return Result(
        metric=f"soak {what}, last vs first window",
        cellfarm=round(last, 2),
        peer=round(first, 2),
        ratio=round(ratio, 3),
        target=target,
        met=target == "report" or check(ratio, target),
        unit=unit,
        details={**details, "per_window": [round(v, 2) for v in values]},
    )


def _results(
    soak: Soak,
    win: Windows,
    pace: Pace,
    acct: dict[str, Any],
    served: list[str],
    detector: str,
    counted: dict[str, list[str]],
) -> list[Result]:
    common = {
        "peer": PEER,
        "duration_s": soak.duration_s,
        "window_s": soak.window_s,
        "microscopes": MICROSCOPES,
        "windows": len(win.starts),
    }
    memory = {
        **common,
        "farm_mib": [round(v, 1) for v in win.farm_mib],
        "server_mib": [round(v, 1) for v in win.server_mib],
        "processes": counted,
        "plot": str(PLOT.relative_to(ROOT)),
    }
    complete = acct["farm_exit_status"] == 0 and all(r["status"] == "completed" for r in acct["runs"].values())
    return [
        _last_vs_first("planned frames/s (the plan's time points)", pace.planned_per_s, "frames/s", ">= 0.9", common),
        _last_vs_first(
            "latest start of a planned event",
            pace.late_max_ms,
            "ms",
            "report",
            {**common, "why": "how late the runner started the plan's events against their min_start_time"},
        ),
        _last_vs_first(
            "frames/s with the policy's revisits",
            win.frames_per_s,
            "frames/s",
            "report",
            {**common, "injected_per_s": [round(v, 2) for v in pace.injected_per_s]},
        ),
        _last_vs_first("resident memory (farm + server)", win.rss_mib, "MiB", "<= 1.1", memory),
        _last_vs_first(
            "decision latency p99", win.p99_ms, "ms", "report", {**common, "served": served, "detector": detector}
        ),
        Result(
            metric="soak lost frames (camera frames vs frames rows vs planes on disk)",
            cellfarm=float(acct["lost"]),
            peer=0.0,
            ratio=float(acct["lost"]),
            target="<= 0",
            met=acct["lost"] == 0 and complete,
            unit="frames",
            details={"peer": "none lost", **{k: v for k, v in acct.items() if k != "lost"}},
        ),
    ]
