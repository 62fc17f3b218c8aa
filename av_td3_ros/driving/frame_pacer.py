"""Predict when the next camera frame is due, so the driver can warm up just before it.

At 20 Hz the driver idles ~45 ms of every 50: the network's weights (the fc layer alone is
6.4 MB) leave the CPU caches and the core drops into an idle state, so a frame's inference
costs about twice what it costs back to back (bench/inference_backends.py,
docs/benchmarks.md). Running the network once more on the previous observation shortly
before the next frame is due wins part of that back. A camera in
CARLA's synchronous mode or the stand-in ticks at a steady rate, so the next arrival is the
last one plus the recent interval; when frames are irregular the pacer says so and the
driver does not warm up (a warm-up that collides with a frame would delay it).

Nothing here imports rclpy; times are seconds of a steady clock.
"""
from __future__ import annotations

import statistics
from collections import deque

from av_td3_ros.validation import check_range


class FramePacer:
    """Track frame arrival times and return when to warm up before the next frame."""

    def __init__(self, lead: float, window: int = 20, min_intervals: int = 5,
                 max_spread: float = 0.2):
        """Warm up `lead` s before the predicted frame.

        A prediction needs `min_intervals` of the last `window` intervals, and none of them
        may differ from their median by more than `max_spread` of it.
        """
        check_range('lead', lead, 0.0)
        if window < min_intervals or min_intervals < 1:
            raise ValueError(f'need 1 <= min_intervals <= window, got {min_intervals} and '
                             f'{window}')
        self.lead = lead
        self.min_intervals = min_intervals
        self.max_spread = max_spread
        self.intervals: deque[float] = deque(maxlen=window)
        self.last_arrival: float | None = None

    def reset(self):
        """Forget the frame history (e.g. the camera stalled)."""
        self.intervals.clear()
        self.last_arrival = None

    def frame(self, now: float) -> float | None:
        """Record a frame arriving at `now`; return the delay until the warm-up, or None.

        None: warming up is off (lead 0), there are not yet enough intervals, or they are
        too irregular to predict the next frame.
        """
        if self.last_arrival is not None:
            interval = now - self.last_arrival
            if interval > 0.0:
                self.intervals.append(interval)
        self.last_arrival = now
        if self.lead <= 0.0 or len(self.intervals) < self.min_intervals:
            return None
        period = statistics.median(self.intervals)
        if any(abs(interval - period) > self.max_spread * period
               for interval in self.intervals):
            return None
        delay = period - self.lead
        return delay if delay > 0.0 else None
