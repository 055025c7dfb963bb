"""The event feed: a plan's events merged with what feedback asks for, handed to the running MDA.

pymmcore-plus runs an *iterator* of events as given (its queue-driven mode), so the feed is a generator the
runner pulls from: before each event it applies the actions that arrived since, so an action takes effect on
the next event. It also assigns each event its place in the position's image (time points added by feedback
get their own time index), which the sink uses as the storage index.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import useq

from acquisition._policy import Revisit, SetExposure, SetLightPower, SkipPosition, Stop

__all__ = ["AppliedAction", "EventFeed", "position_key"]

log = logging.getLogger(__name__)
_POLL_S = 0.01


def position_key(index: dict[str, int]) -> str:
    """The image an event belongs to: one per stage position (and grid tile)."""
    key = f"p{index.get('p', 0):03d}"
    return key + (f"g{index['g']:03d}" if "g" in index else "")


@dataclass(frozen=True)
class AppliedAction:
    """An action and when it took effect, for the `decisions` table."""

    action: Any
    frame_id: int  # the frame the policy saw
    latency_ms: float  # frame acquired -> decision made
    decided_at: float  # wall clock (time.time())
    late_frames: int  # frames acquired between the seen frame and the event the action applied to
    model: str
    model_version: str


@dataclass
class _Pending:
    action: Any
    frame_id: int
    latency_ms: float
    decided_at: float
    model: str
    model_version: str


@dataclass(order=True)
class _Injected:
    due: float
    seq: int
    event: useq.MDAEvent = field(compare=False)


class EventFeed:
    """Iterate the plan, applying feedback between events; thread-safe `submit` from the policy thread."""

    def __init__(
        self,
        plan: useq.MDASequence,
        *,
        clock: Callable[[], float],
        frames_acquired: Callable[[], int],
        should_stop: Callable[[], bool] = lambda: False,
        light: tuple[str, str] | None = None,
        light_power: float | None = None,
        z_planes: int = 1,
        hold: bool = True,
        max_pending: int = 1024,
    ) -> None:
        self.plan = plan
        # Hold each planned event here until it is due, so that feedback arriving meanwhile can go first. Without
        # feedback the runner waits on `min_start_time` itself, and must: the engine's `event_iterator` (hardware
        # sequences) reads one event ahead, so holding here would start the event before it one interval late.
        self._hold = hold
        # A policy that asks for revisits faster than the camera takes them would grow the queue without end (and
        # due feedback goes before the plan): past `max_pending` queued events, further revisits are refused.
        self._max_pending = max_pending
        self.n_refused = 0
        self._positions = list(plan.stage_positions)
        self._clock = clock  # seconds on the runner's event timer
        self._frames_acquired = frames_acquired
        self._should_stop = should_stop
        self._light = light
        self._power = light_power
        self._actions: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._injected: list[_Injected] = []
        self._seq = itertools.count()
        self._exposure: dict[str | None, float] = {}
        self._skip: dict[int, int | None] = {}  # p -> plan time points left to skip (None: for good)
        self._last_plan_t: dict[int, int] = {}
        self._store_t: dict[tuple[str, int | str], int] = {}
        self._next_t: dict[str, int] = {}
        self._stopped: str | None = None
        self.applied: list[AppliedAction] = []
        self._applied_lock = threading.Lock()
        # Feedback z-stacks need room in the image: every image gets `z_planes` planes and a single-plane
        # plan's frames go to the middle one (the focal plane).
        plan_z = max(plan.sizes.get("z", 0), 1)
        self.z_size = max(plan_z, z_planes)
        self._z_offset = self.z_size // 2 if plan_z == 1 else 0
        self.n_injected = 0
        self.n_skipped = 0

    # -- from the policy thread -------------------------------------------------------------------------
    def submit(
        self, actions: Iterable[Any], *, frame_id: int, latency_ms: float, model: str, model_version: str
    ) -> None:
        now = time.time()
        for a in actions:
            self._actions.put(_Pending(a, frame_id, latency_ms, now, model, model_version))

    @property
    def stopped_reason(self) -> str | None:
        return self._stopped

    def drain_applied(self) -> list[AppliedAction]:
        with self._applied_lock:
            out, self.applied = self.applied, []
        return out

    # -- on the runner thread ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[useq.MDAEvent]:
        plan_iter = iter(self.plan)
        nxt: useq.MDAEvent | None = next(plan_iter, None)
        while True:
            self._apply_pending()
            if self._stopped is not None or self._should_stop():
                return
            if nxt is not None and self._skipped(nxt):
                self.n_skipped += 1
                nxt = next(plan_iter, None)
                continue
            plan_due = (nxt.min_start_time or 0.0) if nxt is not None else None
            # Due feedback goes before the plan, even before plan events that are overdue ("as fast as possible").
            if self._injected and (plan_due is None or self._injected[0].due <= max(self._clock(), plan_due)):
                inj = self._injected[0]
                if inj.due > self._clock() and self._wait(inj.due):
                    continue  # something arrived while waiting: re-plan
                heapq.heappop(self._injected)
                yield self._prepare(inj.event, injected=True)
                continue
            if nxt is None:
                return
            # Wait here rather than in the runner, so that actions arriving meanwhile can jump the queue.
            if self._hold and plan_due and plan_due > self._clock() and self._wait(plan_due):
                continue
            event, nxt = nxt, next(plan_iter, None)
            yield self._prepare(event, injected=False)

    def _wait(self, until: float) -> bool:
        """Sleep until `until`; True if an action or a stop came in first."""
        while self._clock() < until:
            if not self._actions.empty() or self._should_stop():
                return True
            time.sleep(min(_POLL_S, max(until - self._clock(), 0.0)))
        return False

    def _skipped(self, event: useq.MDAEvent) -> bool:
        p = event.index.get("p", 0)
        if p not in self._skip:
            return False
        left = self._skip[p]
        t = event.index.get("t", 0)
        if left is not None and self._last_plan_t.get(p) != t:
            if left <= 0:
                del self._skip[p]
                return False
            self._skip[p] = left - 1
            self._last_plan_t[p] = t
        return True

    def _prepare(self, event: useq.MDAEvent, *, injected: bool) -> useq.MDAEvent:
        index = dict(event.index)
        key = position_key(index)
        if injected:
            tag: int | str = event.metadata["feedback_tag"]
        else:
            tag = index.get("t", 0)
        if (key, tag) not in self._store_t:
            self._store_t[(key, tag)] = self._next_t.get(key, 0)
            self._next_t[key] = self._store_t[(key, tag)] + 1
        updates: dict[str, Any] = {}
        exposure = self._exposure.get(event.channel.config if event.channel else None, self._exposure.get(None))
        if exposure is not None:
            updates["exposure"] = exposure
        props = list(event.properties or [])
        if self._light is not None and self._power is not None:
            props = [p for p in props if (p.device_name, p.property_name) != self._light]
            props.append(useq.PropertyTuple(self._light[0], self._light[1], self._power))
            updates["properties"] = props
        meta = dict(event.metadata)
        meta.update(
            store_t=self._store_t[(key, tag)],
            store_z=(index.get("z", 0) if injected else index.get("z", 0) + self._z_offset),
            position_key=key,
            injected=injected,
            light_power=self._power,
        )
        updates["metadata"] = meta
        return event.model_copy(update=updates)

    def _apply_pending(self) -> None:
        while True:
            try:
                pending = self._actions.get_nowait()
            except queue.Empty:
                return
            self._apply(pending)

    def _apply(self, pending: _Pending) -> None:
        a = pending.action
        if isinstance(a, Stop):
            self._stopped = a.reason or "stopped by policy"
        elif isinstance(a, SetExposure):
            self._exposure[a.channel] = a.exposure_ms
        elif isinstance(a, SetLightPower):
            self._power = a.power
        elif isinstance(a, SkipPosition):
            self._skip[a.p] = a.time_points
        elif isinstance(a, Revisit):
            self._schedule_revisit(a)
        late = max(self._frames_acquired() - 1 - pending.frame_id, 0)
        with self._applied_lock:
            self.applied.append(
                AppliedAction(
                    a,
                    pending.frame_id,
                    pending.latency_ms,
                    pending.decided_at,
                    late,
                    pending.model,
                    pending.model_version,
                )
            )

    def _schedule_revisit(self, a: Revisit) -> None:
        positions = self._positions
        if not 0 <= a.p < max(len(positions), 1):
            return
        pos = positions[a.p] if positions else None
        channels = self.plan.channels or (None,)
        base_z = pos.z if pos is not None and pos.z is not None else None
        start = self._clock() + a.delay_s
        offsets = [(k - (a.z_planes - 1) / 2) * a.z_step_um for k in range(a.z_planes)]
        first_z = (self.z_size - a.z_planes) // 2
        if len(self._injected) + a.repeats * len(channels) * a.z_planes > self._max_pending:
            if not self.n_refused:
                log.warning("feedback asks for more than the camera can take: %d events queued", len(self._injected))
            self.n_refused += 1
            return
        for r in range(a.repeats):
            tag = f"fb{next(self._seq)}"
            for c, ch in enumerate(channels):
                for k, dz in enumerate(offsets):
                    ev = useq.MDAEvent.model_validate(
                        {
                            "index": {"t": -1, "p": a.p, "c": c, "z": first_z + k},
                            "channel": ch.config if ch is not None else None,
                            "exposure": ch.exposure if ch is not None else None,
                            "x_pos": pos.x if pos is not None else None,
                            "y_pos": pos.y if pos is not None else None,
                            "z_pos": (base_z + dz) if base_z is not None else None,
                            "pos_name": pos.name if pos is not None else None,
                            "metadata": {"feedback_tag": tag},
                        }
                    )
                    due = start + r * a.interval_s
                    heapq.heappush(self._injected, _Injected(due, next(self._seq), ev))
            self.n_injected += 1
