"""The acquisition agent: one microscope, one plan, one run streamed into the lake, with optional feedback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import useq

import lake
from acquisition._autofocus import AutofocusEngine
from acquisition._feed import EventFeed
from acquisition._feedback import FeedbackLoop
from acquisition._microscope import LIGHT_DEVICE, LIGHT_PROPERTY, Microscope
from acquisition._plan import check_stage_limits, plan_json
from acquisition._policy import FeedbackPolicy, FrameView
from acquisition._runs import RunStatus, fail_dead_runs, finish_run, new_run_id, run_lock, start_run
from acquisition._sink import LakeSink
from acquisition._switch import camera_switch_interval

__all__ = ["AcquisitionError", "Agent", "RunResult"]

log = logging.getLogger(__name__)


class AcquisitionError(lake.LakeError):
    """A run could not start or did not finish; the lake holds what was committed."""


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: RunStatus
    n_frames: int
    error: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class Agent:
    """Drives one microscope through useq-schema plans, streaming every frame into the lake.

    >>> agent = Agent(lake.Lake.open(), open_twin(), microscope_id="twin-0")
    >>> agent.run(default_plan()).status
    'completed'
    """

    def __init__(
        self,
        target: lake.Lake,
        microscope: Microscope,
        *,
        microscope_id: str,
        policy: FeedbackPolicy | None = None,
        on_frame: Callable[[int], None] | None = None,
        sink_options: dict[str, Any] | None = None,
    ) -> None:
        self.lake = target
        self.microscope = microscope
        self.microscope_id = microscope_id
        self.policy = policy
        self._on_frame = on_frame
        self._sink_options = sink_options or {}
        self._abort = threading.Event()
        self._abort_reason = "aborted by operator"

    def abort(self, reason: str = "aborted by operator") -> None:
        """Stop after the current event; the run ends as `aborted`, with `reason` as its error."""
        self._abort_reason = reason
        self._abort.set()
        self.microscope.core.mda.cancel()

    def validate(self, plan: useq.MDASequence) -> None:
        """Refuse a plan this microscope cannot run, before anything moves or is written."""
        core = self.microscope.core
        group = core.getChannelGroup()
        presets = set(core.getAvailableConfigs(group)) if group else set()
        for ch in plan.channels:
            name = ch.config
            if ch.group and ch.group != group:
                presets_g = (
                    set(core.getAvailableConfigs(ch.group)) if ch.group in core.getAvailableConfigGroups() else set()
                )
                if name not in presets_g:
                    raise lake.InvalidInputError(f"unknown channel {name!r} in config group {ch.group!r}")
            elif name not in presets:
                have = ", ".join(sorted(presets)) or "none"
                raise lake.InvalidInputError(f"unknown channel {name!r}: group {group!r} has {have}")
        devices = set(core.getLoadedDevices())
        events = list(plan)
        for ev in events:
            for prop in ev.properties or ():
                if prop.device_name not in devices:
                    raise lake.InvalidInputError(f"unknown device {prop.device_name!r} in plan properties")
        if plan.autofocus_plan is not None:
            af = getattr(plan.autofocus_plan, "autofocus_device_name", None)
            if af and af not in devices:
                raise lake.InvalidInputError(f"unknown autofocus device {af!r}")
        check_stage_limits(events, xy_limits=self.microscope.xy_limits, z_limits=self.microscope.z_limits)

    def run(self, plan: useq.MDASequence, *, run_id: str | None = None) -> RunResult:
        self.validate(plan)
        fail_dead_runs(self.lake)
        run_id = run_id or new_run_id(self.microscope_id)
        policy_name = self.policy.name if self.policy is not None else "none"
        with run_lock(self.lake, run_id):
            started = datetime.now(UTC)
            start_run(
                self.lake,
                run_id,
                microscope_id=self.microscope_id,
                plan=plan_json(plan),
                policy=policy_name,
                started_at=started,
            )
            return self._run(plan, run_id, started)

    def _run(self, plan: useq.MDASequence, run_id: str, started: datetime) -> RunResult:
        m = self.microscope
        core = m.core
        runner = core.mda
        light = (LIGHT_DEVICE, LIGHT_PROPERTY) if m.has_light_power else None
        z_planes = max((getattr(self.policy, "max_z_planes", 1) if self.policy else 1), 1)
        sink: LakeSink
        feed = EventFeed(
            plan,
            clock=runner.event_seconds_elapsed,
            frames_acquired=lambda: sink.frames_acquired(),
            should_stop=lambda: self._abort.is_set() or sink.error is not None,
            light=light,
            light_power=m.light_power(),
            z_planes=z_planes,
            hold=self.policy is not None,
        )
        loop = FeedbackLoop(self.policy, feed) if self.policy is not None else None

        def on_frame(view: FrameView) -> None:
            if loop is not None:
                loop.offer(view)
            if self._on_frame is not None:
                self._on_frame(view.frame_id)

        sink = LakeSink(
            self.lake,
            run_id,
            plan=plan,
            bit_depth=m.bit_depth,
            z_size=feed.z_size,
            pixel_size_um=core.getPixelSizeUm() or None,
            light_power=m.light_power,
            on_frame=on_frame,
            decisions=feed.drain_applied,
            # a hardware sequence only sees the feed's stop between events: cancel it now
            on_error=lambda _exc: runner.cancel(),
            frame_nbytes=_frame_nbytes(core),
            **self._sink_options,
        )

        def on_started(event: useq.MDAEvent) -> None:
            sink.event_started(event, runner.event_seconds_elapsed())

        error: str | None = None
        status: RunStatus = "completed"
        t0 = time.monotonic()
        engine = runner.engine
        if isinstance(engine, AutofocusEngine):
            engine.results.clear()
        try:
            events: Iterator[useq.MDAEvent] = iter(feed)
            if loop is None and engine is not None:
                # No feedback to wait for: let the engine merge events into hardware sequences (the camera's
                # fast path), as `mda.run(sequence)` would. With a policy, events go one by one so that an
                # action takes effect on the very next one.
                events = engine.event_iterator(events)
            runner.events.eventStarted.connect(on_started)
            with camera_switch_interval():
                runner.run(events, output=cast(Any, sink))  # the sink is a frameReady handler
        except KeyboardInterrupt:
            status, error = "aborted", "interrupted"
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            runner.events.eventStarted.disconnect(on_started)
            if loop is not None:
                loop.close()
            sink.close()
        if self._abort.is_set() and status == "completed":
            status, error = "aborted", self._abort_reason
        if sink.error is not None:
            status, error = "failed", f"writing to the lake failed: {_one_line(sink.error)}"
        summary: dict[str, Any] = {
            "microscope": m.source,
            "wall_s": round(time.monotonic() - t0, 3),
            **sink.stats.summary(),
            "events_injected": feed.n_injected,
            "events_skipped": feed.n_skipped,
            "revisits_refused": feed.n_refused,
        }
        if isinstance(engine, AutofocusEngine) and engine.results:
            summary["autofocus"] = [r.summary() for r in engine.results]
        if feed.stopped_reason:
            summary["stopped_by_policy"] = feed.stopped_reason
        if loop is not None:
            summary.update(loop.summary())
        if m.sample is not None:
            from acquisition._score import record_twin_truth

            try:
                summary["twin"] = record_twin_truth(self.lake, run_id, m, started_at=started)
            except Exception as exc:  # the run's own status matters more than its score
                log.warning("could not record the twin's ground truth: %s", exc)
                summary["twin_error"] = _one_line(exc)
        if summary.get("backpressure_frames"):
            log.warning(
                "the lake writer fell behind: the camera waited %.2f s over %d frames",
                summary["backpressure_s"],
                summary["backpressure_frames"],
            )
        try:
            finish_run(self.lake, run_id, status=status, n_frames=sink.stats.n_committed, error=error, summary=summary)
        except Exception as exc:
            # The row stays `running`; the next start sees the dead lock and marks it failed.
            raise AcquisitionError(
                f"run {run_id} ended {status} but its status could not be saved: {_one_line(exc)}"
            ) from None
        return RunResult(run_id, status, sink.stats.n_committed, error, summary)


def _frame_nbytes(core: Any) -> int | None:
    """The camera's frame size, so that the sink starts its plane workers before the first frame."""
    try:
        return int(core.getImageWidth()) * int(core.getImageHeight()) * int(core.getBytesPerPixel())
    except Exception:  # no camera yet: the sink decides on the first frame
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
