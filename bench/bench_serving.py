"""Serving: `cellfarm serve` (BentoML) against the same model in process and behind a plain FastAPI app.

Load comes from this process over 127.0.0.1; the servers are processes of their own (`cellfarm serve`, and
`uvicorn` for the peer), started before any clock and idle while the other is measured.

1. Frame-to-decision latency (ms), 512 x 512 uint16 frames: `FeedbackClient.decide` (binary `.npy` body, one
   at a time) against `decide_batch` on one frame in this process (the same detector and policy, no HTTP).
   Target: HTTP p99 <= in-process p99 + 10 ms.
2. Feedback throughput (frames/s) at concurrency 1, 8 and 32: the adaptive-batching service against FastAPI
   serving the same model and policy one request at a time behind the same front door (token, body limits;
   see `bench._serving_peer`). Target: >= 1.5x at 32, with p99 within the microscope's budget (Feedback's
   `MAX_LATENCY_MS`). Each row also gives the answers per second that came within that budget (goodput) and
   each server's CPU time per answered frame (robust to whatever else the box runs).
3. `VirtualCell.predict` requests/s and p99 at concurrency 16, against FastAPI calling the same function.

The mitosis CNN is registered untrained (seeded): its weights do not change what a forward pass costs. Run it
alone with `python -m bench.bench_serving [--quick]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from rich.progress import Progress

from bench._common import Config, Result, check, console, gene_reference, scratch_dir, shared_data
from cellfarm._server import running

NAME = "serving"
PAPALEXI = "singlecell/papalexi2021_thp1_sceptre_subset.h5ad"
HPA = "hpa/proteinatlas_subcellular_location.tsv"
PEER = "FastAPI, one request at a time"
VC_PEER = "FastAPI, same predict function"
ROOT = Path(__file__).resolve().parents[1]
ENV_PEER_LAKE = "BENCH_SERVING_LAKE"  # read by bench._serving_peer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the lake and the servers ---------------------------------------------------------------------------------


def _build_lake(root: Path, data: Path) -> None:
    import torch

    import lake
    import models
    from models.imaging import ImagingMitosisDetector, MitosisNet, register_detector

    ref = gene_reference()
    target = lake.Lake.open(root, gene_reference=str(ref) if ref else None)
    lake.ingest_atlas(target, data / PAPALEXI, name="papalexi2021")
    lake.ingest_hpa(target, data / HPA)
    record = models.train(target, "perturbation-mean", "papalexi2021", holdout=["BRD4", "CUL3", "JAK2", "MYC"])
    models.set_stage(target, record, "production")
    torch.manual_seed(0)
    cnn = register_detector(target, ImagingMitosisDetector(MitosisNet(), version="0", threshold=0.5))
    models.set_stage(target, cnn, "production")


def _cpu_s(pid: int) -> float:
    """CPU seconds used so far by a server: the process and its children (BentoML serves from a child)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Load:
    ok: int
    shed: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    batch_sizes: list[int]
    server_cpu_s: float = float("nan")

    @property
    def cpu_ms_per_frame(self) -> float:
        """Server CPU per answered request: what a request costs, whatever else the box runs meanwhile."""
        return 1000 * self.server_cpu_s / self.ok if self.ok else float("nan")

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    @property
    def p99(self) -> float:
        return _pct(self.latencies_ms, 99)

    def within(self, budget_ms: float) -> float:
        """Answers per second that arrived within `budget_ms`: what a microscope can still act on."""
        return sum(1 for t in self.latencies_ms if t <= budget_ms) / self.seconds


def _measured(
    pid: int, url: str, headers: dict[str, str], make: Callable[[int], dict[str, Any]], concurrency: int, seconds: float
) -> Load:
    """A warm-up second (the batcher learns its costs), then `seconds` of load, with the server's CPU time."""
    asyncio.run(_load(url, headers, make, concurrency, 1.0))
    before = _cpu_s(pid)
    out = asyncio.run(_load(url, headers, make, concurrency, seconds))
    out.server_cpu_s = _cpu_s(pid) - before
    return out


async def _load(
    url: str, headers: dict[str, str], make: Callable[[int], dict[str, Any]], concurrency: int, seconds: float
) -> Load:
    lat: list[float] = []
    batches: list[int] = []
    counts = {"ok": 0, "shed": 0, "errors": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        t_start = time.perf_counter()
        stop = t_start + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, **make(i))
                except httpx.HTTPError:
                    counts["errors"] += 1
                    continue
                i += concurrency
                if r.status_code == 200:
                    counts["ok"] += 1
                    lat.append((time.perf_counter() - t0) * 1000)
                    body = r.json()
                    if isinstance(body, list) and body and "batch_size" in body[0]:
                        batches.append(int(body[0]["batch_size"]))
                elif r.status_code in (429, 503):  # shed: come back when told (a microscope skips frames)
                    counts["shed"] += 1
                    await asyncio.sleep(min(float(r.headers.get("retry-after", 0.01)), 1.0))
                else:
                    counts["errors"] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    return Load(counts["ok"], counts["shed"], counts["errors"], elapsed, lat, batches)


# -- the measurements -----------------------------------------------------------------------------------------


def _frames(n: int) -> list[np.ndarray]:
    from acquisition.twin import TwinConfig, TwinSample
    from models.imaging import render_frames

    def plate(seed: int, size: int) -> TwinSample:
        return TwinSample(TwinConfig(seed=seed, time_scale=0, width=size, height=size))

    return list(render_frames(plate, twin_seed=21, n_frames=n, exposure_ms=20.0, power_pct=50.0).images)


def _latency(lake_root: Path, url: str, token: str, frames: list[np.ndarray], n: int) -> list[Result]:
    import torch

    import lake
    from serving._frames import Frame
    from serving._imaging import FeedbackPolicyState, decide_batch, find_detector, load_detector_state
    from serving._schemas import FrameMeta
    from serving.client import FeedbackClient

    torch.set_num_threads(1)  # as the servers (see run)
    state = load_detector_state(find_detector(lake.Lake.open(lake_root)))
    policy = FeedbackPolicyState()
    inproc: list[float] = []
    for i in range(n + 20):
        meta = FrameMeta(run_id="inproc", frame_id=i, p=i % 8, bit_depth=12)
        t0 = time.perf_counter()
        decide_batch(state, policy, [Frame(meta, frames[i % len(frames)], t0)])
        if i >= 20:  # warm-up first
            inproc.append((time.perf_counter() - t0) * 1000)
    http: list[float] = []
    with FeedbackClient(url, token=token, timeout_s=10) as client:
        for i in range(n + 20):
            t0 = time.perf_counter()
            client.decide(frames[i % len(frames)], {"run_id": "http", "frame_id": i, "p": i % 8, "bit_depth": 12})
            if i >= 20:
                http.append((time.perf_counter() - t0) * 1000)
    out = []
    for q, target in ((50, "report"), (99, "<= 10")):
        overhead = _pct(http, q) - _pct(inproc, q)
        out.append(
            Result(
                metric=f"feedback frame-to-decision p{q}, 512x512 uint16, HTTP minus in process",
                cellfarm=_pct(http, q),
                peer=_pct(inproc, q),
                ratio=overhead,
                target=target,
                met=True if target == "report" else check(overhead, target),
                unit="ms",
                details={"peer": "the same model in process", "requests": n, "ratio_is": "ms added by HTTP"},
            )
        )
    return out


def _throughput(
    servers: tuple[int, int],
    url: str,
    peer: str,
    headers: dict[str, str],
    frames: list[np.ndarray],
    seconds: float,
    progress: Progress,
) -> list[Result]:
    from serving._frames import FRAME_HEADER, NPY_MEDIA_TYPE, encode_npy
    from serving.feedback import MAX_LATENCY_MS

    bodies = [encode_npy(f) for f in frames]

    def make(i: int) -> dict[str, Any]:
        meta = json.dumps({"run_id": f"load-{i % 64}", "frame_id": i, "p": i % 8, "bit_depth": 12})
        h = {"content-type": NPY_MEDIA_TYPE, FRAME_HEADER: meta}
        return {"content": bodies[i % len(bodies)], "headers": h}

    out = []
    task = progress.add_task("feedback throughput", total=6)
    for conc in (1, 8, 32):
        mine = _measured(servers[0], url + "/decide", headers, make, conc, seconds)
        progress.advance(task)
        theirs = _measured(servers[1], peer + "/decide", headers, make, conc, seconds)
        progress.advance(task)
        ratio = mine.rate / theirs.rate if theirs.rate else float("inf")
        target = ">= 1.5" if conc == 32 else "report"
        details = {
            "peer": PEER,
            "seconds": round(mine.seconds, 1),
            "p99_ms": round(mine.p99, 1),
            "peer_p99_ms": round(theirs.p99, 1),
            "shed": mine.shed,
            "peer_shed": theirs.shed,
            "errors": mine.errors + theirs.errors,
            "mean_batch": round(float(np.mean(mine.batch_sizes)), 2) if mine.batch_sizes else None,
            "budget_ms": MAX_LATENCY_MS,
            "within_budget_per_s": round(mine.within(MAX_LATENCY_MS), 1),
            "peer_within_budget_per_s": round(theirs.within(MAX_LATENCY_MS), 1),
            "server_cpu_ms_per_frame": round(mine.cpu_ms_per_frame, 2),
            "peer_server_cpu_ms_per_frame": round(theirs.cpu_ms_per_frame, 2),
        }
        out.append(
            Result(
                metric=f"feedback throughput at concurrency {conc}, 512x512 uint16",
                cellfarm=mine.rate,
                peer=theirs.rate,
                ratio=ratio,
                target=target,
                met=True if target == "report" else check(ratio, target),
                unit="frames/s",
                details=details,
            )
        )
        if conc == 32:
            good, peer_good = mine.within(MAX_LATENCY_MS), theirs.within(MAX_LATENCY_MS)
            out.append(
                Result(
                    metric=f"feedback decisions within the {MAX_LATENCY_MS} ms budget at concurrency 32",
                    cellfarm=good,
                    peer=peer_good,
                    ratio=good / peer_good if peer_good else float("inf"),
                    target="report",
                    met=True,
                    unit="frames/s",
                    details={"peer": PEER},
                )
            )
            out.append(
                Result(
                    metric="feedback p99 at concurrency 32 over the microscope's budget",
                    cellfarm=mine.p99,
                    peer=float(MAX_LATENCY_MS),
                    ratio=mine.p99 / MAX_LATENCY_MS,
                    target="<= 1",
                    met=check(mine.p99 / MAX_LATENCY_MS, "<= 1"),
                    unit="ms",
                    details={"peer": "the budget (MAX_LATENCY_MS)", "shed": mine.shed},
                )
            )
    return out


def _predict(servers: tuple[int, int], url: str, peer: str, headers: dict[str, str], seconds: float) -> Result:
    perts = ["STAT1", "IRF1", "SPI1", "STAT3", "SMAD4", "IFNGR2", "UBE2L6", "CD86"]

    def make(i: int) -> dict[str, Any]:
        chosen = [perts[(i + k) % len(perts)] for k in range(4)]
        return {"json": {"perturbations": chosen, "top_k": 10}}

    mine = _measured(servers[0], url + "/predict", headers, make, 16, seconds)
    theirs = _measured(servers[1], peer + "/predict", headers, make, 16, seconds)
    return Result(
        metric="VirtualCell.predict at concurrency 16 (4 perturbations, profiles)",
        cellfarm=mine.rate,
        peer=theirs.rate,
        ratio=mine.rate / theirs.rate if theirs.rate else float("inf"),
        target="report",
        met=True,
        unit="requests/s",
        details={
            "peer": VC_PEER,
            "p99_ms": round(mine.p99, 1),
            "peer_p99_ms": round(theirs.p99, 1),
            "shed": mine.shed,
            "errors": mine.errors + theirs.errors,
            "server_cpu_ms_per_request": round(mine.cpu_ms_per_frame, 2),
            "peer_server_cpu_ms_per_request": round(theirs.cpu_ms_per_frame, 2),
        },
    )


def run(cfg: Config, progress: Progress) -> list[Result]:
    data = shared_data()
    if data is None:
        console.print("[yellow]serving: no shared data; skipped[/]")
        return []
    seconds = 3.0 if cfg.quick else 10.0
    n_latency = 50 if cfg.quick else 300
    with scratch_dir("serving") as work:
        work.mkdir(parents=True)
        lake_root = work / "lake"
        _build_lake(lake_root, data)
        frames = _frames(16)
        token = secrets.token_urlsafe(16)
        port, peer_port = _free_port(), _free_port()
        env = {
            **os.environ,
            "CELLFARM_API_TOKEN": token,
            "CELLFARM_SERVE_MAX_INFLIGHT_VC": "32",  # measure throughput, not the (default 8) shedding bound
            # one torch thread on both sides: on 2 cores shared with the load generator, torch's spinning
            # worker threads (one per core) slow everything else down
            "CELLFARM_SERVE_TORCH_THREADS": "1",
            "BENTOML_HOME": str(work / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            ENV_PEER_LAKE: str(lake_root),
        }
        env.pop("CELLFARM_LAKE", None)
        cellfarm = [str(Path(sys.executable).parent / "cellfarm"), "--lake", str(lake_root), "serve"]
        uvicorn = [sys.executable, "-m", "uvicorn", "bench._serving_peer:peer_app", "--factory"]
        common: dict[str, Any] = {"env": env, "startup_s": 300, "cwd": ROOT}
        url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        headers = {"Authorization": f"Bearer {token}"}
        with (
            running(
                [*cellfarm, "--port", str(port)], ready_url=url + "/readyz", log=work / "serve.log", **common
            ) as mine,
            # uvicorn's access log on (its default), as cellfarm writes one line per request too
            running(
                [*uvicorn, "--port", str(peer_port)], ready_url=peer + "/readyz", log=work / "peer.log", **common
            ) as theirs,
        ):
            servers = (mine.pid, theirs.pid)
            results = _latency(lake_root, url, token, frames, n_latency)
            results += _throughput(servers, url, peer, headers, frames, seconds, progress)
            results.append(_predict(servers, url, peer, headers, seconds))
        shutil.rmtree(work / "bentoml", ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    from bench._common import write_results

    cfg = Config(quick="--quick" in (argv if argv is not None else sys.argv[1:]))
    with Progress(console=console) as progress:
        results = run(cfg, progress)
    table = Table("metric", "cellfarm", "peer", "unit", "ratio", "target", "met")
    for r in results:
        table.add_row(r.metric, f"{r.cellfarm:.2f}", f"{r.peer:.2f}", r.unit, f"{r.ratio:.3f}", r.target, str(r.met))
    console.print(table)
    console.print(f"wrote {write_results(NAME, results, config=cfg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
