"""The feedback loop: a policy on its own thread, fed the newest frame, answering into the event feed."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from acquisition._feed import EventFeed
from acquisition._policy import FeedbackPolicy, FrameView

__all__ = ["FeedbackLoop"]

log = logging.getLogger(__name__)


class FeedbackLoop:
    """Runs `policy.decide` off the camera thread.

    `offer` never blocks: it replaces any frame the policy has not started on yet, so a slow policy sees the
    newest frame and its decision lands on the next event (the lateness is recorded per decision).
    """

    def __init__(self, policy: FeedbackPolicy, feed: EventFeed) -> None:
        self.policy = policy
        self.feed = feed
        self._slot: FrameView | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.n_offered = 0
        self.n_decided = 0
        self.n_superseded = 0
        self.n_errors = 0
        # the recent decisions' times (a day-long run decides millions of frames), and the slowest of all
        self.decide_ms: deque[float] = deque(maxlen=10_000)
        self.decide_ms_max: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"policy-{policy.name}", daemon=True)
        self._thread.start()

    def offer(self, frame: FrameView) -> None:
        if not self.policy.wants(frame):
            return
        with self._cond:
            if self._slot is not None:
                self.n_superseded += 1
            self._slot = frame
            self.n_offered += 1
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closed:
                    self._cond.wait()
                if self._slot is None:
                    return
                frame, self._slot = self._slot, None
            t0 = time.perf_counter()
            try:
                actions: list[Any] = list(self.policy.decide(frame))
            except Exception as exc:  # a broken policy must not take the acquisition down
                self.n_errors += 1
                log.warning("policy %s failed on frame %d: %s", self.policy.name, frame.frame_id, exc)
                continue
            ms = (time.perf_counter() - t0) * 1000
            self.decide_ms.append(ms)
            self.decide_ms_max = max(ms, self.decide_ms_max or 0.0)
            self.n_decided += 1
            if actions:
                latency = (datetime.now(UTC) - frame.acquired_at).total_seconds() * 1000
                self.feed.submit(
                    actions,
                    frame_id=frame.frame_id,
                    latency_ms=latency,
                    model=self.policy.name,
                    model_version=self.policy.version,
                )

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the policy finish the frame in hand (its decision is still recorded), then stop."""
        with self._cond:
            self._closed = True
            self._slot = None
            self._cond.notify()
        self._thread.join(timeout_s)

    def summary(self) -> dict[str, Any]:
        ms = sorted(self.decide_ms)
        return {
            "policy": self.policy.name,
            "policy_version": self.policy.version,
            "frames_offered": self.n_offered,
            "frames_decided": self.n_decided,
            "frames_superseded": self.n_superseded,
            "policy_errors": self.n_errors,
            "decide_ms_p50": round(ms[len(ms) // 2], 2) if ms else None,
            "decide_ms_max": round(self.decide_ms_max, 2) if self.decide_ms_max is not None else None,
        }
