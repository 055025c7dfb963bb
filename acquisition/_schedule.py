"""Did the microscope keep its plan's pace? Planned and feedback-added frames, and how late the runner started the
planned events, per bucket of the run's clock.

A run's frame rate mixes the plan (time points every `interval`) with what the feedback policy added (revisits,
z-stacks), so it rises and falls with the sample. The plan's own frames, and how late their events started
against `MDAEvent.min_start_time`, are what show a pipeline that slows the camera down. Buckets start at 10 s and
double (merging pairs) whenever there would be more than `max_buckets`, so a day-long run's summary stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Schedule"]

T = TypeVar("T", int, float)


@dataclass
class Schedule:
    bucket_s: float = 10.0
    max_buckets: int = 120
    planned: list[int] = field(default_factory=list)  # frames of the plan's own events
    injected: list[int] = field(default_factory=list)  # frames of events the feedback policy added
    starts: list[int] = field(default_factory=list)  # planned events with a start time
    late_max_ms: list[float] = field(default_factory=list)  # the latest start of a planned event
    late_sum_ms: list[float] = field(default_factory=list)

    def frame(self, at_s: float, *, injected: bool) -> None:
        """A frame at `at_s` on the run's clock, of a planned event or of one the policy added."""
        k = self._bucket(at_s)
        (self.injected if injected else self.planned)[k] += 1

    def started(self, at_s: float, *, late_ms: float) -> None:
        """A planned event started `late_ms` after its `min_start_time` (early, by a clock's jitter, is on time)."""
        k = self._bucket(at_s)
        late = max(late_ms, 0.0)
        self.starts[k] += 1
        self.late_max_ms[k] = max(self.late_max_ms[k], late)
        self.late_sum_ms[k] += late

    def _bucket(self, at_s: float) -> int:
        while (k := int(max(at_s, 0.0) // self.bucket_s)) >= self.max_buckets:
            self._coarsen()
        while len(self.planned) <= k:
            for counts in (self.planned, self.injected, self.starts):
                counts.append(0)
            self.late_max_ms.append(0.0)
            self.late_sum_ms.append(0.0)
        return k

    def _coarsen(self) -> None:
        def pairs(xs: list[T], f: Callable[[list[T]], T]) -> list[T]:
            return [f(xs[i : i + 2]) for i in range(0, len(xs), 2)]

        self.planned, self.injected, self.starts = (pairs(xs, sum) for xs in (self.planned, self.injected, self.starts))
        self.late_max_ms, self.late_sum_ms = pairs(self.late_max_ms, max), pairs(self.late_sum_ms, sum)
        self.bucket_s *= 2

    def summary(self) -> dict[str, Any]:
        mean = [round(s / n, 1) if n else None for s, n in zip(self.late_sum_ms, self.starts, strict=True)]
        return {
            "bucket_s": self.bucket_s,
            "planned": list(self.planned),
            "injected": list(self.injected),
            "late_max_ms": [round(v, 1) for v in self.late_max_ms],
            "late_mean_ms": mean,
        }
