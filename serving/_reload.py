"""Zero-downtime model updates: the served state is swapped whole when the registry's production version moves.

A `Served` holds one state object. `refresh()` resolves what the registry says should be served, and only when
that differs from what is loaded, builds the new state (off the request path) and replaces the reference in one
assignment. A request reads the reference once at its start, so it runs entirely on one version. A failed load
keeps the old version serving and reports the error. `refresh` runs every `poll_s` seconds on a daemon thread,
and on demand (`POST /reload`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Served"]

log = logging.getLogger(__name__)
S = TypeVar("S")
R = TypeVar("R")


class Served(Generic[R, S]):
    def __init__(
        self,
        what: str,
        *,
        find: Callable[[], R | None],
        load: Callable[[R | None], S | None],
        ident: Callable[[R | None], str],
    ) -> None:
        self.what = what
        self._find, self._load, self._ident = find, load, ident
        self.state: S | None = None
        self.loaded: str | None = None  # ident of what `state` is
        self.error: str = ""
        self._lock = threading.Lock()  # one refresh at a time (the poller and /reload may race)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load what the registry says to serve, when it changed; True when the served state changed."""
        with self._lock:
            try:
                record = self._find()
                key = self._ident(record)
                if key == self.loaded and self.state is not None:
                    return False
                state = self._load(record)
            except Exception as exc:  # keep serving what is loaded; say why the new one is not
                self.error = f"{self.what}: {' '.join(str(exc).split())[:300] or type(exc).__name__}"
                log.warning("%s", self.error)
                return False
            previous = self.loaded
            self.state, self.loaded, self.error = state, key, ""
            if state is not None:
                log.info("%s: serving %s (was %s)", self.what, key, previous)
            return True

    def start(self, poll_s: float) -> None:
        if poll_s <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name=f"reload-{self.what}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
