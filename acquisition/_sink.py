"""The streaming sink: frames from the camera thread into OME-Zarr and Delta, without slowing the camera.

The frame callback only stamps the frame and puts it on a bounded queue; a writer thread hands each plane to the
plane executor (threads for small frames, worker processes for big ones: :mod:`acquisition._planes`), which
writes it and computes its QC, and appends `frames` rows in micro-batches. A row is appended only after its
plane is on disk, so every row points at a chunk that exists. When the writer falls behind and the queue is
full, the callback waits (no frame is ever dropped) and the wait is measured and reported as backpressure.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import useq

import lake
from acquisition._feed import AppliedAction, position_key
from acquisition._planes import PlaneExecutor, PlaneMode, plane_executor
from acquisition._policy import FrameView
from acquisition._qc import FrameQC
from acquisition._schedule import Schedule

__all__ = ["LakeSink", "SinkStats"]

log = logging.getLogger(__name__)
_STOP = object()
_WELL = re.compile(r"^([A-Pa-p]\d{1,2})(?:_|$)")


@dataclass
class SinkStats:
    n_frames: int = 0  # seen by the callback
    n_written: int = 0  # planes on disk
    n_committed: int = 0  # rows in Delta
    commits: dict[str, int] = field(default_factory=dict)
    queue_capacity: int = 0
    queue_high_water: int = 0
    backpressure_s: float = 0.0
    backpressure_frames: int = 0
    writer_busy_s: float = 0.0
    planes: str | None = None  # where the plane work ran: threads or processes
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    closed_at: float | None = None
    schedule: Schedule = field(default_factory=Schedule)

    def summary(self) -> dict[str, Any]:
        span = (self.last_frame_at or 0.0) - (self.first_frame_at or 0.0)
        life = (self.closed_at or time.monotonic()) - (self.first_frame_at or time.monotonic())
        n_commits = sum(self.commits.values())
        return {
            "frames": self.n_frames,
            "frames_written": self.n_written,
            "frames_committed": self.n_committed,
            "frames_lost": self.n_frames - self.n_committed,
            "frames_per_s": round((self.n_frames - 1) / span, 3) if span > 0 and self.n_frames > 1 else None,
            "commits": dict(self.commits),
            "commits_per_s": round(n_commits / life, 3) if life > 0 else None,
            "queue_capacity": self.queue_capacity,
            "queue_high_water": self.queue_high_water,
            "backpressure_s": round(self.backpressure_s, 4),
            "backpressure_frames": self.backpressure_frames,
            "writer_busy_s": round(self.writer_busy_s, 3),
            "planes": self.planes,
            "schedule": self.schedule.summary(),
        }


@dataclass
class _Item:
    view: FrameView  # where, when and how: read once, on the camera thread
    key: str  # the position's image


class LakeSink:
    """A pymmcore-plus output handler (`frameReady`) that streams a run into the lake."""

    def __init__(
        self,
        target: lake.Lake,
        run_id: str,
        *,
        plan: useq.MDASequence,
        bit_depth: int,
        z_size: int = 1,
        pixel_size_um: float | None = None,
        light_power: Callable[[], float | None] = lambda: None,
        on_frame: Callable[[FrameView], None] | None = None,
        decisions: Callable[[], list[AppliedAction]] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        flush_frames: int = 64,
        flush_s: float = 1.0,
        min_flush_interval_s: float = 0.5,
        max_queue_bytes: int = 512 * 2**20,
        levels: int = 2,
        planes: PlaneMode = "auto",
        plane_workers: int | None = None,
        frame_nbytes: int | None = None,
    ) -> None:
        self.lake = target
        self.run_id = run_id
        self.plan = plan
        self.bit_depth = bit_depth
        self.z_size = z_size
        self.pixel_size_um = pixel_size_um
        self._light_power = light_power
        self._on_frame = on_frame
        self._decision_source = decisions
        self._on_error = on_error
        self.flush_frames = flush_frames
        self.flush_s = flush_s
        self.min_flush_interval_s = min_flush_interval_s
        self.max_queue_bytes = max_queue_bytes
        self.levels = levels
        self.stats = SinkStats()
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] | None = None
        self._images: dict[str, tuple[lake.OmeZarrImage, lake.PlaneWriter]] = {}
        self._rows: list[dict[str, Any]] = []
        self._decisions: list[dict[str, Any]] = []
        self._decisions_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._writer = threading.Thread(target=self._write_loop, name=f"sink-{run_id}", daemon=True)
        # None: the executor's default for its kind (2 threads, or a process per spare core). Two planes in flight
        # per worker (four by default): one being written, one waiting, so a worker never idles
        self._plane_mode: PlaneMode = planes
        self._plane_workers = max(plane_workers, 1) if plane_workers is not None else None
        self._max_inflight = 2 * (self._plane_workers or 2)
        self._planes: PlaneExecutor | None = None
        if frame_nbytes is not None:  # started before the camera's first frame (worker processes take seconds)
            self._start_planes(frame_nbytes)
        self._inflight: deque[tuple[_Item, Future[FrameQC]]] = deque()
        self._images_lock = threading.Lock()
        self._channels = [c.config for c in plan.channels]
        t_interval = getattr(plan.time_plan, "interval", None)
        self._t_interval_s = t_interval.total_seconds() if t_interval is not None else None
        self._z_step = getattr(plan.z_plan, "step", None)

    # -- the camera thread --------------------------------------------------------------------------------
    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: dict[str, Any]) -> None:
        """Stamp the frame and queue it; blocks (measured) only when the writer is a whole queue behind."""
        now = time.monotonic()
        if self._queue is None:  # sized from the first frame, so big frames get fewer slots
            self._queue = queue.Queue(maxsize=max(4, self.max_queue_bytes // max(img.nbytes, 1)))
            self.stats.queue_capacity = self._queue.maxsize
            self._writer.start()
            self.stats.first_frame_at = now
        self.stats.last_frame_at = now
        view = self._view(self.stats.n_frames, img, event, meta)
        item = _Item(view, event.metadata.get("position_key") or position_key(dict(event.index)))
        self.stats.n_frames += 1
        self._on_schedule(event, meta)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            t0 = time.monotonic()
            self._queue.put(item)
            self.stats.backpressure_s += time.monotonic() - t0
            self.stats.backpressure_frames += 1
        self.stats.queue_high_water = max(self.stats.queue_high_water, self._queue.qsize())
        if self._on_frame is not None:
            self._on_frame(view)

    def _on_schedule(self, event: useq.MDAEvent, meta: dict[str, Any]) -> None:
        runner_ms = meta.get("runner_time_ms")
        if isinstance(runner_ms, int | float) and runner_ms >= 0:
            self.stats.schedule.frame(runner_ms / 1000, injected=bool(event.metadata.get("injected")))

    def event_started(self, event: useq.MDAEvent, at_s: float) -> None:
        """The runner started `event` at `at_s` on its event clock: how late against the plan (`eventStarted`)."""
        if self._t_interval_s and event.min_start_time is not None and not event.metadata.get("injected"):
            # "as fast as possible" plans (no interval) are never late
            self.stats.schedule.started(at_s, late_ms=1000 * (at_s - event.min_start_time))

    def frames_acquired(self) -> int:
        return self.stats.n_frames

    def add_decisions(self, applied: list[AppliedAction]) -> None:
        rows = [
            {
                "run_id": self.run_id,
                "frame_id": a.frame_id,
                "model": a.model,
                "model_version": a.model_version,
                "action": a.action.action,
                "params": json.dumps(a.action.model_dump(exclude={"action"})),
                "latency_ms": a.latency_ms,
                "decided_at": datetime.fromtimestamp(a.decided_at, UTC),
                "late_frames": a.late_frames,
            }
            for a in applied
        ]
        with self._decisions_lock:
            self._decisions.extend(rows)

    # -- the writer thread --------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                item = None
            t0 = time.monotonic()
            try:
                if self.error is None:
                    if item is not None and item is not _STOP:
                        self._inflight.append((item, self._submit(item)))
                    # rows are taken in frame order; a plane's row only once the plane is on disk
                    done = item is _STOP
                    while self._inflight and (
                        done or self._inflight[0][1].done() or len(self._inflight) >= self._max_inflight
                    ):
                        written, fut = self._inflight.popleft()
                        self._rows.append(self._row(written, fut.result()))
                        self.stats.n_written += 1
                    self._maybe_flush()
            except Exception as exc:  # the agent sees `error` and stops the run
                log.error("sink failed: %s", exc)
                self.error = exc
                if self._on_error is not None:  # e.g. cancel the MDA: frames that cannot be kept need no light
                    self._on_error(exc)
            self.stats.writer_busy_s += time.monotonic() - t0
            if item is _STOP:
                break

    def _start_planes(self, frame_nbytes: int) -> PlaneExecutor:
        self._planes = plane_executor(
            self._plane_mode,
            frame_nbytes=frame_nbytes,
            slots=self._max_inflight,
            workers=self._plane_workers,
            name=f"plane-{self.run_id}",
        )
        self.stats.planes = self._planes.kind
        return self._planes

    def _image(self, key: str, plane: np.ndarray) -> tuple[lake.OmeZarrImage, lake.PlaneWriter]:
        with self._images_lock:
            return self._images.get(key) or self._create_image(key, plane)

    def _create_image(self, key: str, plane: np.ndarray) -> tuple[lake.OmeZarrImage, lake.PlaneWriter]:
        y, x = plane.shape[:2]
        spec = lake.ImageSpec(
            t=max(self.plan.sizes.get("t", 0), 1),
            c=max(len(self._channels), 1),
            z=self.z_size,
            y=y,
            x=x,
            dtype=str(plane.dtype),
            pixel_size_um=self.pixel_size_um,
            z_step_um=self._z_step,
            t_interval_s=self._t_interval_s,
            channel_names=tuple(self._channels),
            levels=self.levels,
            name=f"{self.run_id}/{key}",
        )
        img = lake.OmeZarrImage.create(self.lake.settings.image_uri(self.run_id, key), spec)
        self._images[key] = (img, img.planes)
        return self._images[key]

    def _submit(self, item: _Item) -> Future[FrameQC]:
        v = item.view
        img, writer = self._image(item.key, v.image)
        img.reserve(v.t, v.image.shape)  # the time axis grows here, in one place; workers only put chunks
        planes = self._planes or self._start_planes(v.image.nbytes)
        return planes.submit(writer, v.t, v.c, v.z, v.image, bit_depth=self.bit_depth)

    def _row(self, item: _Item, qc: FrameQC) -> dict[str, Any]:
        v = item.view
        self._images[item.key][0].written(v.t)
        return {
            "run_id": self.run_id,
            "frame_id": v.frame_id,
            "t": v.t,
            "p": v.p,
            "c": v.c,
            "z": v.z,
            "well": v.well,
            "x_um": v.x_um,
            "y_um": v.y_um,
            "z_um": v.z_um,
            "channel": v.channel,
            "exposure_ms": v.exposure_ms,
            "light_power": v.light_power,
            "acquired_at": v.acquired_at,
            "image_uri": self.lake.settings.image_uri(self.run_id, item.key),
            "shape": list(v.image.shape[:2]),
            "dtype": str(v.image.dtype),
            "mean": qc.mean,
            "max": qc.max,
            "saturated_frac": qc.saturated_frac,
            "focus_score": qc.focus_score,
        }

    def _maybe_flush(self, *, force: bool = False) -> None:
        age = time.monotonic() - self._last_flush
        pending = bool(self._rows) or bool(self._decisions) or force
        due = age >= self.flush_s or (len(self._rows) >= self.flush_frames and age >= self.min_flush_interval_s)
        if pending and (force or due):
            self.flush()

    def flush(self) -> None:
        if self._decision_source is not None:
            self.add_decisions(self._decision_source())
        rows, self._rows = self._rows, []
        with self._decisions_lock:
            decisions, self._decisions = self._decisions, []
        if rows:
            self.lake.append("frames", rows)
            self.stats.commits["frames"] = self.stats.commits.get("frames", 0) + 1
            self.stats.n_committed += len(rows)
        if decisions:
            self.lake.append("decisions", decisions)
            self.stats.commits["decisions"] = self.stats.commits.get("decisions", 0) + 1
        self._last_flush = time.monotonic()

    def _view(self, frame_id: int, img: np.ndarray, ev: useq.MDAEvent, meta: dict[str, Any]) -> FrameView:
        index, fb = ev.index, ev.metadata  # the feed's storage indices and light power, when it set them
        pos = meta.get("position") or {}
        well = _WELL.match(ev.pos_name or "")
        return FrameView(
            run_id=self.run_id,
            frame_id=frame_id,
            t=int(fb.get("store_t", index.get("t", 0))),
            p=index.get("p", 0),
            c=index.get("c", 0),
            z=int(fb.get("store_z", index.get("z", 0))),
            well=well.group(1).upper() if well else None,
            channel=ev.channel.config if ev.channel else None,
            x_um=pos.get("x", ev.x_pos),
            y_um=pos.get("y", ev.y_pos),
            z_um=pos.get("z", ev.z_pos),
            exposure_ms=meta.get("exposure_ms", ev.exposure),
            light_power=fb["light_power"] if "light_power" in fb else self._light_power(),
            acquired_at=datetime.now(UTC),
            image=img,
            bit_depth=self.bit_depth,
        )

    # -- end of run ---------------------------------------------------------------------------------------
    def close(self) -> SinkStats:
        """Drain the queue, commit what is left, trim the images. Raises the writer's error, if any."""
        if self._queue is not None:
            self._queue.put(_STOP)
            self._writer.join()
        for _item, fut in self._inflight:  # after a writer error: let planes in flight land before trimming
            fut.exception()
        if self._planes is not None:
            self._planes.close()
        try:  # rows whose planes are on disk are committed even after a writer error
            self._maybe_flush(force=True)
        except Exception as exc:
            self.error = self.error or exc
        for img, _writer in self._images.values():
            try:
                img.close()
            except Exception as exc:  # a full disk may refuse the metadata rewrite; the planes stay readable
                log.warning("could not trim %s: %s", img.path, exc)
        self.stats.closed_at = time.monotonic()
        return self.stats
