"""The event feed: feedback actions change the events the MDA runs, from the next event on."""

from __future__ import annotations

import useq

from acquisition import EventFeed, Revisit, SetExposure, SetLightPower, SkipPosition, Stop

PLAN = useq.MDASequence(
    stage_positions=[(0, 0, 0), (100, 0, 0)],
    channels=[{"config": "GFP", "exposure": 10}],
    time_plan={"interval": 0, "loops": 3},
)


def _feed(**kw: object) -> tuple[EventFeed, list[int]]:
    frames = [0]
    feed = EventFeed(PLAN, clock=lambda: 1e9, frames_acquired=lambda: frames[0], **kw)  # type: ignore[arg-type]
    return feed, frames


def test_plain_plan_passes_through() -> None:
    feed, _ = _feed()
    events = list(feed)
    assert [(e.index["t"], e.index["p"]) for e in events] == [(t, p) for t in range(3) for p in range(2)]
    assert [e.metadata["store_t"] for e in events] == [0, 0, 1, 1, 2, 2]
    assert not any(e.metadata["injected"] for e in events)


def test_revisit_inserts_time_points_that_get_their_own_index() -> None:
    feed, frames = _feed()
    it = iter(feed)
    first = next(it)
    frames[0] = 1
    feed.submit([Revisit(p=0, repeats=2, interval_s=0)], frame_id=0, latency_ms=3.0, model="m", model_version="1")
    rest = list(it)
    injected = [e for e in rest if e.metadata["injected"]]
    assert len(injected) == 2
    assert {e.index["p"] for e in injected} == {0}
    assert sorted(e.metadata["store_t"] for e in injected) == [1, 2]
    # the plan's own later time points at p0 move past the inserted ones
    plan_p0 = [e.metadata["store_t"] for e in [first, *rest] if not e.metadata["injected"] and e.index["p"] == 0]
    assert plan_p0 == [0, 3, 4]
    (applied,) = feed.drain_applied()
    assert applied.frame_id == 0
    assert applied.late_frames == 0
    assert applied.action.action == "revisit"


def test_late_decisions_are_counted_in_frames() -> None:
    feed, frames = _feed()
    it = iter(feed)
    next(it)
    frames[0] = 4  # three more frames were taken before the decision on frame 0 arrived
    feed.submit([SetLightPower(power=10)], frame_id=0, latency_ms=50.0, model="m", model_version="1")
    next(it)
    assert feed.drain_applied()[0].late_frames == 3


def test_exposure_power_skip_and_stop() -> None:
    feed, _ = _feed(light=("LED", "Power"), light_power=50.0)
    it = iter(feed)
    e0 = next(it)
    assert e0.exposure == 10
    assert e0.metadata["light_power"] == 50.0
    feed.submit(
        [SetExposure(exposure_ms=5), SetLightPower(power=20), SkipPosition(p=1)],
        frame_id=0,
        latency_ms=1,
        model="m",
        model_version="1",
    )
    e1 = next(it)
    assert e1.index["p"] == 0
    assert e1.index["t"] == 1
    assert e1.exposure == 5
    assert e1.metadata["light_power"] == 20.0
    assert any(p.device_name == "LED" and p.property_value == 20.0 for p in e1.properties or ())
    feed.submit([Stop(reason="enough")], frame_id=1, latency_ms=1, model="m", model_version="1")
    assert list(it) == []
    assert feed.stopped_reason == "enough"
    assert feed.n_skipped >= 1


def test_revisit_with_z_stack_uses_the_image_z_axis() -> None:
    feed, _ = _feed(z_planes=5)
    it = iter(feed)
    e0 = next(it)
    assert feed.z_size == 5
    assert e0.metadata["store_z"] == 2
    feed.submit(
        [Revisit(p=1, repeats=1, z_planes=3, z_step_um=2)], frame_id=0, latency_ms=1, model="m", model_version="1"
    )
    stack = [e for e in it if e.metadata["injected"]]
    assert [e.metadata["store_z"] for e in stack] == [1, 2, 3]
    assert [e.z_pos for e in stack] == [-2.0, 0.0, 2.0]


def test_revisits_past_the_pending_bound_are_refused() -> None:
    feed, frames = _feed(max_pending=5)
    it = iter(feed)
    next(it)
    frames[0] = 1
    revisit = Revisit(p=0, repeats=2, interval_s=0)
    feed.submit([revisit] * 4, frame_id=0, latency_ms=1.0, model="m", model_version="1")
    rest = list(it)
    # two revisits of two events fit under 5; the third and fourth would not, and are refused, not queued
    assert sum(e.metadata["injected"] for e in rest) == 4
    assert feed.n_refused == 2
    assert feed.n_injected == 4
    assert len(feed.drain_applied()) == 4  # each decision is still a `decisions` row
