"""`predictions` rows, committed in batches by a background thread: a request never waits on the lake.

The queue is bounded: when the lake cannot keep up (or is unreachable for long), the oldest pending rows
are dropped and counted (`Status.predictions_dropped`) rather than growing memory without bound. A failed
commit is retried on the next flush.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

import lake

__all__ = ["PredictionLog"]

log = logging.getLogger(__name__)


class PredictionLog:
    def __init__(self, target: lake.Lake, *, flush_s: float = 2.0, max_pending: int = 20_000) -> None:
        self.target = target
        self.flush_s = flush_s
        self._pending: deque[dict[str, Any]] = deque()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.logged = 0
        self.dropped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="predictions-log", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def log(
        self,
        request_id: str,
        *,
        model: str,
        version: str,
        perturbations: list[str],
        context: dict[str, Any],
        summary: dict[str, Any],
    ) -> None:
        row = {
            "request_id": request_id,
            "model": model,
            "version": version,
            "perturbations": perturbations,
            "context": json.dumps(context, sort_keys=True, default=str),
            "summary": json.dumps(summary, sort_keys=True, default=str),
            "requested_at": datetime.now(UTC),
        }
        with self._lock:
            self._pending.append(row)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self.dropped += 1

    def flush(self) -> int:
        """Commit what is pending now (one Delta commit); returns the rows committed."""
        with self._lock:
            rows = list(self._pending)
            self._pending.clear()
        if not rows:
            return 0
        try:
            self.target.append("predictions", rows)
        except Exception as exc:  # the lake is down or busy: keep the rows for the next flush
            self.errors += 1
            log.warning("predictions: %d rows not committed yet: %s", len(rows), exc)
            with self._lock:
                self._pending.extendleft(reversed(rows))
                while len(self._pending) > self._max_pending:
                    self._pending.popleft()
                    self.dropped += 1
            return 0
        self.logged += len(rows)
        return len(rows)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush()
