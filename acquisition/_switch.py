"""The interpreter's thread switch interval while a camera runs.

A thread that wants the GIL waits for the holder to release it, or for the switch interval (5 ms by default) to
force a release. The camera's thread runs Python between its numpy calls, so every wait delays a frame, and the
sink's writer, the plane pool's threads and Delta's commits all take the GIL now and then. In alternating runs
of 300-600 frames, a 0.5-1 ms interval raised the twin's 2048x2048 frame rate from 0.91x to 0.94x of the bare
camera (worker processes for the planes; with threads, 0.77x to 0.90x), at the cost of more switches for
CPU-bound threads.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CAMERA_SWITCH_INTERVAL_S", "camera_switch_interval"]

CAMERA_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_active = 0
_saved = 0.005


@contextmanager
def camera_switch_interval(interval_s: float = CAMERA_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Switch threads every `interval_s` while any run of this process is on; the old interval after the last."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(interval_s, _saved))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_saved)
