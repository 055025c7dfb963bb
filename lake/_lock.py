"""A machine-local writer lock, so that crash recovery never removes another live writer's work.

``flock`` is released by the kernel when its holder dies (even by SIGKILL), so a killed ingest never leaves
a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from lake._errors import LakeBusyError

__all__ = ["is_held", "liveness_lock", "writer_lock"]


@contextmanager
def _flock(path: Path, *, timeout_s: float, busy: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LakeBusyError(busy) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def writer_lock(path: Path, *, timeout_s: float = 600.0) -> AbstractContextManager[None]:
    return _flock(path, timeout_s=timeout_s, busy=f"another writer holds {path} for over {timeout_s:.0f} s")


def liveness_lock(path: Path) -> AbstractContextManager[None]:
    """Hold ``path`` for as long as this process is alive and inside the block; see :func:`is_held`."""
    return _flock(path, timeout_s=0.0, busy=f"{path} is held by a live process")


def is_held(path: Path) -> bool:
    """Whether a live process holds ``path`` (a missing file is not held): how a run's liveness is told."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
