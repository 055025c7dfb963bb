"""Acquisition: the whole pipeline attached (OME-Zarr + Delta + QC) vs the same core with no handlers.

Peers, in this one process: `core.mda.run(sequence)` on the twin's `UniMMCore` with a bare frame counter
(pymmcore-plus on its own), against `Agent.run(sequence)` on an identical twin. Rates are taken on the camera
side, first frame to last, so they say whether the lake slowed the camera. At 2048x2048 two controls, the bare
camera beside an idle-priority process that computes in cache or streams memory on the other core, measure what
any work there costs the camera on this machine, whatever the pipeline does. Then four agents at once, one process
each, into one lake, against one agent alone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any, Literal

import numpy as np
import useq
from rich.progress import Progress

from bench._common import Config, Result, check, median, scratch_dir

NAME = "acquire"
PEER = "pymmcore-plus, no handlers"
TARGET_RATE = ">= 0.95"
TARGET_COMMITS = "<= 2"


EXPOSURE_MS = 10.0


def _plan(n: int, exposure_ms: float = EXPOSURE_MS) -> useq.MDASequence:
    return useq.MDASequence.model_validate(
        {"channels": [{"config": "GFP", "exposure": exposure_ms}], "time_plan": {"interval": 0, "loops": n}}
    )


def _twin(size: int, realtime: bool) -> Any:
    from acquisition import open_twin
    from acquisition.twin import TwinConfig

    # realtime: the camera takes its exposure time, as a real one does; else it renders as fast as it can
    return open_twin(TwinConfig(seed=0, width=size, height=size, realtime_exposure=realtime))


def _bare(size: int, n: int, realtime: bool) -> float:
    scope = _twin(size, realtime)
    stamps: list[float] = []
    scope.core.mda.events.frameReady.connect(lambda *_: stamps.append(time.perf_counter()))
    try:
        scope.core.mda.run(_plan(n))
    finally:
        scope.close()
    assert len(stamps) == n, f"bare run gave {len(stamps)} of {n} frames"
    return (n - 1) / (stamps[-1] - stamps[0])


SpinKind = Literal["cpu", "memory"]
SPINS: dict[SpinKind, str] = {
    "cpu": "a CPU-bound loop (in cache)",
    "memory": "a memory-streaming loop (8 MiB copies and sums)",
}


def _spin(kind: SpinKind) -> None:
    """Work at idle priority: any other thread that wants a core preempts it at once, so on a machine whose cores
    shared nothing it could not slow the camera."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if kind == "cpu":
        x = 0
        while True:
            x += 1
    src = np.ones(4 << 20, np.uint16)
    dst = np.empty_like(src)
    while True:
        np.copyto(dst, src)
        dst.sum()


def _bare_beside(kind: SpinKind, size: int, n: int, realtime: bool) -> float:
    """The bare camera while `_spin(kind)` keeps the other core busy: what such work costs the camera on this
    machine (host cores, clocks, caches and memory bandwidth shared), however it is scheduled."""
    spinner = mp.get_context("spawn").Process(target=_spin, args=(kind,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)  # spawned and spinning
        return _bare(size, n, realtime)
    finally:
        spinner.kill()
        spinner.join()


def _pipeline(size: int, n: int, realtime: bool) -> dict[str, Any]:
    import lake
    from acquisition import Agent

    with scratch_dir("acquire") as root:
        target = lake.Lake.open(root)
        scope = _twin(size, realtime)
        try:
            result = Agent(target, scope, microscope_id="bench").run(_plan(n))
        finally:
            scope.close()
        rows = target.read("frames").num_rows
    s = result.summary
    assert result.status == "completed", result.error
    return {**s, "rows_in_delta": rows}


def _rate(
    size: int, n: int, repeats: int, progress: Progress, *, realtime: bool = True, controls: bool = False
) -> list[Result]:
    pace = f"{EXPOSURE_MS:g} ms exposures" if realtime else "unpaced render, stress"
    spins: tuple[SpinKind, ...] = ("cpu", "memory") if controls else ()
    task = progress.add_task(f"{size}x{size} x {n} frames, {pace}", total=(2 + len(spins)) * repeats)
    bare: list[float] = []
    piped: list[float] = []
    spun: dict[SpinKind, list[float]] = {kind: [] for kind in spins}
    runs: list[dict[str, Any]] = []
    # a short run of each first: the first MDA in a process is slower (imports, heap growth, page faults),
    # and whichever side went first would pay for it
    _bare(size, min(n, 100), realtime)
    _pipeline(size, min(n, 100), realtime)
    for _ in range(repeats):  # alternate, so that drift (page cache, thermal) hits both sides alike
        bare.append(_bare(size, n, realtime))
        progress.advance(task)
        run = _pipeline(size, n, realtime)
        runs.append(run)
        piped.append(float(run["frames_per_s"]))
        progress.advance(task)
        for kind in spins:
            spun[kind].append(_bare_beside(kind, size, n, realtime))
            progress.advance(task)
    ratio = median(piped) / median(bare)
    lost = max(int(r["frames_lost"]) + (n - int(r["rows_in_delta"])) for r in runs)
    worst = max(runs, key=lambda r: float(r["commits_per_s"]))
    details = {
        "peer": PEER,
        "repeats": repeats,
        "frames": n,
        "frames_lost_max": lost,
        "backpressure_s_max": max(float(r["backpressure_s"]) for r in runs),
        "queue_high_water_max": max(int(r["queue_high_water"]) for r in runs),
        "writer_busy_s": [r["writer_busy_s"] for r in runs],
        "planes": sorted({str(r["planes"]) for r in runs}),  # threads, or worker processes (big frames)
    }
    commits = float(worst["commits_per_s"])
    rows_per_s = median([float(r["frames_committed"]) / float(r["wall_s"]) for r in runs])
    machine = [
        Result(
            metric=f"what work on the other core costs the bare camera at {size}x{size}: {SPINS[kind]} at idle "
            "priority, beside vs alone",
            cellfarm=round(median(spun[kind]), 2),
            peer=round(median(bare), 2),
            ratio=round(median(spun[kind]) / median(bare), 3),
            target="report",
            met=True,
            unit="frames/s",
            details={"peer": "the bare camera alone", "repeats": repeats, "frames": n, "runs": spun[kind]},
        )
        for kind in spins
    ]
    return [
        Result(
            metric=f"frame rate {size}x{size} uint16, {n:,} frames ({pace}), pipeline vs bare",
            cellfarm=round(median(piped), 2),
            peer=round(median(bare), 2),
            ratio=round(ratio, 3),
            target=TARGET_RATE,
            met=check(ratio, TARGET_RATE) and lost == 0,
            unit="frames/s",
            details=details,
        ),
        Result(
            metric=f"Delta commits per second per run ({size}x{size}; {rows_per_s:,.0f} rows/s)",
            cellfarm=commits,
            peer=2.0,
            ratio=round(commits / 2.0, 3),
            target="<= 1",
            met=commits <= 2.0,
            unit="commits/s",
            details={"peer": "the budget (2/s)", "rows_per_s": round(rows_per_s, 1), "commits": worst["commits"]},
        ),
        *machine,
    ]


def _farm(n_agents: int, n: int, progress: Progress) -> Result:
    # agents run the plan file's 10 ms exposures on realtime twins, like the single-agent rows
    import lake
    from acquisition import AgentSpec, run_farm

    task = progress.add_task(f"{n_agents} agents vs 1", total=2)
    out: dict[int, tuple[float, int, int]] = {}
    for k in (1, n_agents):
        with scratch_dir("farm") as root, scratch_dir("plans") as plans:
            plans.mkdir(parents=True)
            plan_path = plans / "plan.json"
            plan_path.write_text(_plan(n).model_dump_json())
            lake.Lake.open(root)
            specs = [
                AgentSpec(
                    lake_root=str(root),
                    microscope_id=f"farm-{i}",
                    plan=str(plan_path),
                    seed=i,
                    twin_options=(("realtime_exposure", True),),
                )
                for i in range(k)
            ]
            t0 = time.perf_counter()
            results = run_farm(specs)
            wall = time.perf_counter() - t0
            reported = sum(r.n_frames for r in results.values() if not isinstance(r, str))
            rows = lake.Lake.open(root).read("frames").num_rows
            # every agent's frames/s, summed: the farm's camera-side throughput
            total = sum(float(r.summary["frames_per_s"]) for r in results.values() if not isinstance(r, str))
            out[k] = (total, reported, rows)
            del wall
        progress.advance(task)
    lost = (n_agents * n - out[n_agents][2]) + (out[n_agents][1] - out[n_agents][2])
    ratio = out[n_agents][0] / out[1][0]
    return Result(
        metric=f"{n_agents} agents at once (processes, one lake), total frames/s vs one agent",
        cellfarm=round(out[n_agents][0], 2),
        peer=round(out[1][0], 2),
        ratio=round(ratio, 3),
        target=">= 1",
        met=lost == 0,
        unit="frames/s",
        details={"peer": "one agent", "frames_per_agent": n, "rows_lost": lost, "rows": out[n_agents][2]},
    )


def run(cfg: Config, progress: Progress) -> list[Result]:
    repeats = 1 if cfg.quick else 2
    results = _rate(512, 200 if cfg.quick else 2000, repeats, progress)
    results += _rate(2048, 50 if cfg.quick else 2000, repeats + 1, progress, controls=True)
    # the camera as fast as the twin renders: the writer then competes for the same two cores
    results += _rate(512, 200 if cfg.quick else 2000, 1, progress, realtime=False)[:1]
    results.append(_farm(4, 100 if cfg.quick else 500, progress))
    return results
