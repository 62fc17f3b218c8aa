# Test if the frame pacer predicts steady frames, and stays quiet when it cannot.
import pytest

from av_td3_ros.driving.frame_pacer import FramePacer


def feed(pacer, arrivals):
    return [pacer.frame(t) for t in arrivals]


def test_steady_frames_give_the_period_minus_the_lead():
    pacer = FramePacer(lead=0.002, min_intervals=5)
    delays = feed(pacer, [1.0 + 0.05 * k for k in range(8)])
    assert delays[:5] == [None] * 5  # 0-4 intervals: not yet
    assert delays[5:] == [pytest.approx(0.048)] * 3


def test_jitter_within_the_spread_is_tolerated_and_the_median_is_used():
    pacer = FramePacer(lead=0.002, min_intervals=5, max_spread=0.2)
    arrivals, t = [], 0.0
    for interval in [0.05, 0.055, 0.046, 0.05, 0.052, 0.049]:
        t += interval
        arrivals.append(t)
    assert feed(pacer, [0.0, *arrivals])[-1] == pytest.approx(0.05 - 0.002)


def test_an_irregular_interval_stops_warm_ups_until_it_leaves_the_window():
    pacer = FramePacer(lead=0.002, window=6, min_intervals=5)
    times = [0.05 * k for k in range(7)]
    assert feed(pacer, times)[-1] is not None
    t = times[-1] + 0.2  # a dropped frame or a paused simulator
    assert pacer.frame(t) is None
    for _ in range(5):  # still in the window of the last 6 intervals
        t += 0.05
        assert pacer.frame(t) is None
    assert pacer.frame(t + 0.05) == pytest.approx(0.048)


def test_off_reset_and_bad_settings():
    off = FramePacer(lead=0.0)
    assert all(d is None for d in feed(off, [0.05 * k for k in range(30)]))
    too_long = FramePacer(lead=0.06)  # a lead past the next frame cannot be kept
    assert all(d is None for d in feed(too_long, [0.05 * k for k in range(30)]))
    pacer = FramePacer(lead=0.002)
    feed(pacer, [0.05 * k for k in range(30)])
    pacer.reset()
    assert pacer.frame(10.0) is None and pacer.last_arrival == 10.0
    assert not pacer.intervals
    with pytest.raises(ValueError, match='lead'):
        FramePacer(lead=-0.001)
    with pytest.raises(ValueError, match='min_intervals'):
        FramePacer(lead=0.002, window=3, min_intervals=5)
