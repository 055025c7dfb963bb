"""Safe teardown of pymmcore cores at interpreter exit."""

from __future__ import annotations

import atexit
import weakref
from typing import Any

import pymmcore

__all__ = ["detach_at_exit"]


def _detach_callback(ref: weakref.ref[Any]) -> None:
    # pymmcore's core delivers callbacks from its own thread; if a core is still alive when the interpreter
    # finalizes, that thread is killed mid-callback and the process aborts ("FATAL: exception not
    # rethrown"). Unregistering the callback while Python is still whole avoids it.
    core = ref()
    if core is not None:
        pymmcore.CMMCore.registerCallback(core, None)


def detach_at_exit(core: pymmcore.CMMCore) -> None:
    atexit.register(_detach_callback, weakref.ref(core))
