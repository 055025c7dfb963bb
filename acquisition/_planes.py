"""Where a frame's plane work runs: in threads beside the camera, or in worker processes for big frames.

The work for one plane is the pyramid's level 1, every level encoded and written, and the QC numbers: ~20 ms of
CPU for a 2048x2048 uint16 plane. In threads of the camera's process that work keeps taking the GIL from the
camera's thread, which runs Python between its numpy calls: the twin's camera ran at 0.79x of its bare frame
rate (2,000 frames, 2 vCPUs). In worker processes at idle priority, fed through shared memory, the kernel gives
the camera a core first and no lock is shared: 0.91x (`bench/bench_acquire.py`). Small planes stay on threads,
where a hop to another process would cost more than the plane.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Any, Literal, Protocol

import numpy as np

import lake
from acquisition._qc import FrameQC, binned_qc

__all__ = [
    "PROCESS_MIN_BYTES",
    "PlaneExecutor",
    "PlaneMode",
    "ProcessPlanes",
    "ThreadPlanes",
    "default_process_workers",
    "plane_executor",
    "store_plane",
    "worker_pids",
]

log = logging.getLogger(__name__)

PlaneMode = Literal["auto", "threads", "processes"]
# "auto" sends planes of this size and up (1024x1024 uint16) to worker processes
PROCESS_MIN_BYTES = 2 * 2**20


def store_plane(writer: lake.PlaneWriter, t: int, c: int, z: int, plane: np.ndarray, *, bit_depth: int) -> FrameQC:
    """Write a plane at every level of its image and return its QC: the whole per-plane work, wherever it runs."""
    binned, qc = binned_qc(plane, bit_depth=bit_depth)  # level 1 of the pyramid comes with the QC's pass
    writer.write(t, c, z, plane, binned=binned)
    return qc


class PlaneExecutor(Protocol):
    """Runs `store_plane` off the camera's thread; futures complete in any order."""

    kind: Literal["threads", "processes"]

    def submit(
        self, writer: lake.PlaneWriter, t: int, c: int, z: int, plane: np.ndarray, *, bit_depth: int
    ) -> Future[FrameQC]: ...

    def close(self) -> None: ...


class ThreadPlanes:
    """Planes written by threads of this process (encoding, writing and most of the QC release the GIL)."""

    kind: Literal["threads", "processes"] = "threads"

    def __init__(self, workers: int = 2, *, name: str = "plane") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix=name)

    def submit(
        self, writer: lake.PlaneWriter, t: int, c: int, z: int, plane: np.ndarray, *, bit_depth: int
    ) -> Future[FrameQC]:
        return self._pool.submit(store_plane, writer, t, c, z, plane, bit_depth=bit_depth)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class ProcessPlanes:
    """Planes copied into a ring of shared-memory slots and written by this process's pool of worker processes.

    The copy (0.3 ms for 8 MiB) is the only per-plane work left in this process. A slot is reused once its plane's
    future is done, so at most `slots` planes are in flight.
    """

    kind: Literal["threads", "processes"] = "processes"

    def __init__(self, slot_bytes: int, *, slots: int, workers: int = 2) -> None:
        self._pool = _process_pool(workers)
        self._slot_bytes = slot_bytes
        self._shm = shared_memory.SharedMemory(create=True, size=slot_bytes * max(slots, 1))
        self._free = list(range(max(slots, 1)))
        self._cv = threading.Condition()

    def submit(
        self, writer: lake.PlaneWriter, t: int, c: int, z: int, plane: np.ndarray, *, bit_depth: int
    ) -> Future[FrameQC]:
        if plane.nbytes > self._slot_bytes:  # bigger than the run's first frame (a changed ROI): pickled instead
            return self._submit(None, store_plane, writer, t, c, z, plane, bit_depth=bit_depth)
        with self._cv:
            while not self._free:
                self._cv.wait()
            slot = self._free.pop()
        offset = slot * self._slot_bytes
        np.ndarray(plane.shape, plane.dtype, buffer=self._shm.buf, offset=offset)[...] = plane
        args = (self._shm.name, offset, plane.shape, plane.dtype.str, writer, t, c, z, bit_depth)
        return self._submit(slot, _store_shared, *args)

    def _submit(self, slot: int | None, fn: Callable[..., FrameQC], *args: Any, **kwargs: Any) -> Future[FrameQC]:
        try:
            fut = self._pool.submit(fn, *args, **kwargs)
        except BaseException as exc:
            if slot is not None:
                self._release(slot)
            if isinstance(exc, BrokenProcessPool):
                _forget(self._pool)
            raise
        if slot is not None:
            fut.add_done_callback(lambda _f: self._release(slot))
        # a worker that died (killed, out of memory) breaks the pool: the next run starts a fresh one
        fut.add_done_callback(lambda f: _forget_if_broken(self._pool, f))
        return fut

    def _release(self, slot: int) -> None:
        with self._cv:
            self._free.append(slot)
            self._cv.notify()

    def close(self) -> None:
        """Release the shared memory; call once every submitted future is done."""
        self._shm.close()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


def default_process_workers() -> int:
    """Plane worker processes when none are asked for: one per core beyond the camera's, at most two.

    On 2 cores, one: with two, both cores hold a worker whenever the camera's thread wakes, and the bare twin
    camera's 2048x2048 rate fell to 0.86x with the pipeline attached, against 0.95x with one (700 frames x 3,
    alternating with bare runs). One worker writes ~80 such planes a second, twice the camera's rate.
    """
    return max(1, min(2, (os.cpu_count() or 2) - 1))


def plane_executor(
    mode: PlaneMode, *, frame_nbytes: int, slots: int, workers: int | None = None, name: str = "plane"
) -> PlaneExecutor:
    """Threads for small frames, processes from `PROCESS_MIN_BYTES` up ("auto"), or as asked; `workers` threads
    (default 2) or processes (default `default_process_workers()`).

    Where worker processes cannot start (a daemonic process, no shared memory), planes stay on threads, with a
    warning: slower for big frames, never lost."""
    threads = workers or 2
    if mode == "threads" or (mode == "auto" and frame_nbytes < PROCESS_MIN_BYTES):
        return ThreadPlanes(threads, name=name)
    try:
        return ProcessPlanes(frame_nbytes, slots=slots, workers=workers or default_process_workers())
    except (OSError, AssertionError, ValueError, RuntimeError, BrokenProcessPool) as exc:
        log.warning("planes stay in this process: worker processes could not start (%s)", exc)
        return ThreadPlanes(threads, name=name)


# -- the process pool, shared by every run of this process ---------------------------------------------------------

_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """This process's worker pool, started (and warmed) on first use; a broken one is replaced."""
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or workers > _POOL_WORKERS:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            if mp.current_process().daemon:
                raise AssertionError("a daemonic process cannot start worker processes")
            # forkserver: this process has threads (the camera's, delta-rs's), which a plain fork would copy
            # mid-lock; the server imports this module once and forks each worker from it
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_setup)
            # start every worker now, not on the camera's first frames (workers start one per busy submit)
            for fut in [pool.submit(_started) for _ in range(workers)]:
                fut.result(timeout=120)
            _POOL, _POOL_WORKERS = pool, workers
        return _POOL


def worker_pids() -> list[int]:
    """The pids of this process's plane workers, if it started any (diagnostics, tests)."""
    with _POOL_LOCK:
        procs = getattr(_POOL, "_processes", None) or {}
    return sorted(procs)


def _forget_if_broken(pool: ProcessPoolExecutor, fut: Future[FrameQC]) -> None:
    if not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool):
        _forget(pool)


def _forget(pool: ProcessPoolExecutor) -> None:
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is pool:
            _POOL, _POOL_WORKERS = None, 0


# -- in the worker processes ------------------------------------------------------------------------------------

_ATTACHED: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
_KEEP_ATTACHED = 2  # the current run's ring, and the one before while its last planes finish


def _worker_setup() -> None:
    # Ctrl-C reaches the whole process group: the agent stops its run and drains its planes, so a worker must
    # finish the planes it was given rather than die with them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The camera's process gets the CPU first; the planes take what is left, and the sink's queue (measured,
    # never dropped) absorbs a busy moment.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(10)


def _started() -> int:
    return os.getpid()


def _store_shared(
    name: str,
    offset: int,
    shape: tuple[int, ...],
    dtype: str,
    writer: lake.PlaneWriter,
    t: int,
    c: int,
    z: int,
    bit_depth: int,
) -> FrameQC:
    shm = _ATTACHED.pop(name, None) or shared_memory.SharedMemory(name)
    _ATTACHED[name] = shm
    while len(_ATTACHED) > _KEEP_ATTACHED:
        _ATTACHED.popitem(last=False)[1].close()
    plane = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf, offset=offset)
    try:
        return store_plane(writer, t, c, z, plane, bit_depth=bit_depth)
    finally:
        del plane  # no view may outlive the call: the ring's mapping is closed once it is evicted
