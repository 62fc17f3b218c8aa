# StallWatchdog (core, no ROS): fires after silence, repeats, stops on feed, survives errors.
# Conditions with generous deadlines only; the timing figures are in bench/watchdog_timing.py.
import threading
import time

import pytest

from av_td3_ros.nodes.watchdog import StallWatchdog


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def calls():
    return []


def test_brakes_before_the_first_frame_and_after_silence(calls):
    watchdog = StallWatchdog(0.05, 0.01, calls.append)
    watchdog.start()
    try:
        assert wait_for(lambda: len(calls) >= 3)
        assert calls[0] is None  # nothing has arrived yet
        watchdog.feed()
        assert wait_for(lambda: any(c is not None for c in calls))
        silent = [c for c in calls if c is not None]
        assert silent[0] >= 0.05  # never before the timeout
        assert wait_for(lambda: len([c for c in calls if c is not None]) >= 3)  # repeats
    finally:
        watchdog.stop()
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count  # stopped means stopped


def test_feeding_keeps_it_quiet(calls):
    watchdog = StallWatchdog(5.0, 0.01, calls.append)
    watchdog.feed()
    watchdog.start()
    stop = threading.Event()

    def feeder():
        while not stop.is_set():
            watchdog.feed()
            time.sleep(0.01)
    thread = threading.Thread(target=feeder)
    thread.start()
    try:
        time.sleep(0.2)
        assert calls == []
    finally:
        stop.set()
        thread.join()
        watchdog.stop()


def test_an_exception_in_the_brake_is_reported_and_the_watchdog_goes_on(calls):
    errors = []

    def on_stall(silent_for):
        calls.append(silent_for)
        raise RuntimeError('publisher gone')

    watchdog = StallWatchdog(0.01, 0.01, on_stall, errors.append)
    watchdog.start()
    try:
        assert wait_for(lambda: len(calls) >= 3 and len(errors) >= 3)
        assert str(errors[0]) == 'publisher gone'
    finally:
        watchdog.stop()


def test_rejects_non_positive_periods():
    with pytest.raises(ValueError):
        StallWatchdog(0.0, 0.1, print)
    with pytest.raises(ValueError):
        StallWatchdog(0.5, 0.0, print)
