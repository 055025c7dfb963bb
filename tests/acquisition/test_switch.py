"""The thread switch interval is short while a run is on, and back to what it was after the last run ends."""

from __future__ import annotations

import sys
import threading

import pytest

from acquisition._switch import CAMERA_SWITCH_INTERVAL_S, camera_switch_interval


def test_the_interval_is_short_during_runs_and_restored_after_the_last() -> None:
    before = sys.getswitchinterval()
    first_in, second_in = threading.Event(), threading.Event()
    first_out = threading.Event()
    seen: list[float] = []

    def second_run() -> None:
        with camera_switch_interval():
            second_in.set()
            first_out.wait(10)
            seen.append(sys.getswitchinterval())  # the first run ended; this one is still on

    with camera_switch_interval():
        first_in.set()
        assert sys.getswitchinterval() == pytest.approx(CAMERA_SWITCH_INTERVAL_S)
        other = threading.Thread(target=second_run)
        other.start()
        assert second_in.wait(10)
    first_out.set()
    other.join(10)
    assert seen == [pytest.approx(CAMERA_SWITCH_INTERVAL_S)]
    assert sys.getswitchinterval() == pytest.approx(before)
    with pytest.raises(RuntimeError), camera_switch_interval():  # an error inside a run restores it too
        raise RuntimeError("camera fell over")
    assert sys.getswitchinterval() == pytest.approx(before)
