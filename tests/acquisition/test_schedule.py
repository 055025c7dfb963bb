"""The schedule of a run: planned and feedback-added frames per bucket, and how late the planned events started."""

from __future__ import annotations

from acquisition._schedule import Schedule


def test_buckets_count_frames_and_keep_the_worst_start() -> None:
    s = Schedule(bucket_s=10.0)
    s.started(0.4, late_ms=20.0)
    s.frame(0.5, injected=False)
    s.started(9.8, late_ms=80.0)
    s.frame(9.9, injected=False)
    s.frame(12.0, injected=True)
    s.started(25.0, late_ms=-3.0)  # early, by a clock's jitter: on time
    s.frame(25.1, injected=False)
    s.frame(26.0, injected=False)  # of an event with no start time: counted, not timed
    out = s.summary()
    assert out["bucket_s"] == 10.0
    assert out["planned"] == [2, 0, 2]
    assert out["injected"] == [0, 1, 0]
    assert out["late_max_ms"] == [80.0, 0.0, 0.0]
    assert out["late_mean_ms"] == [50.0, None, 0.0]


def test_a_long_run_doubles_the_bucket_instead_of_growing() -> None:
    s = Schedule(bucket_s=10.0, max_buckets=4)
    for t in range(0, 100, 5):  # 100 s: 10 buckets of 10 s would be too many
        s.frame(float(t), injected=t % 10 == 5)
        if t % 10 == 0:
            s.started(float(t), late_ms=float(t))
    out = s.summary()
    assert out["bucket_s"] == 40.0
    assert len(out["planned"]) == 3
    assert sum(out["planned"]) == 10  # nothing lost in the merges
    assert sum(out["injected"]) == 10
    assert out["late_max_ms"] == [30.0, 70.0, 90.0]
    assert out["late_mean_ms"] == [15.0, 55.0, 85.0]
