"""A stall watchdog on the steady (monotonic) clock, in its own thread (no ROS imports).

The driver must brake when camera frames stop, and the usual reason frames stop is that the
simulator stopped - which also stops ROS sim time (`/clock`). rclpy timers follow the node's
clock, so with `use_sim_time` a timer-based watchdog would never fire exactly when it is
needed. This one waits on `time.monotonic` in a thread, so it also fires while the node's
executor is busy (a callback that hangs in inference still gets the car braked).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StallWatchdog:
    """Call `on_stall` when `feed()` has not been called for `timeout` seconds.

    The first call comes `timeout` after the last feed (as precisely as the OS schedules a
    waiting thread), then one every `repeat_period` until the next feed. Before the first
    feed it calls `on_stall` every `repeat_period` too (nothing has arrived yet).
    `on_stall(silent_for)` gets the seconds since the last feed (None before the first);
    an exception from it is handed to `on_error(error)` and the watchdog goes on.
    """

    def __init__(self, timeout: float, repeat_period: float,
                 on_stall: Callable[[float | None], None],
                 on_error: Callable[[Exception], None] | None = None):
        """Prepare the watchdog; `start()` runs it."""
        if timeout <= 0.0 or repeat_period <= 0.0:
            raise ValueError(f'timeout and repeat_period must be > 0, got {timeout} and '
                             f'{repeat_period}')
        self.timeout = timeout
        self.repeat_period = repeat_period
        self.on_stall = on_stall
        self.on_error = on_error
        self.last_feed: float | None = None
        self.stalls = 0
        """on_stall calls so far."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='stall_watchdog', daemon=True)

    def start(self):
        """Start the watchdog thread."""
        self._thread.start()

    def stop(self, timeout: float = 2.0):
        """Stop the thread and wait for it (at most `timeout` s)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def feed(self):
        """Record that a frame arrived now."""
        self.last_feed = time.monotonic()
        self._wake.set()

    def _run(self):
        next_repeat = None  # when the next repeated on_stall is due while stalled
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            last = self.last_feed
            if last is not None and now < last + self.timeout:
                next_repeat = None
                self._wake.wait(last + self.timeout - now)
                continue
            due = now if next_repeat is None else next_repeat
            if now >= due:
                self._fire(None if last is None else now - last)
                # Counted from when it was due, so one late wake-up does not push every later
                # brake back (the rate stays 1 / repeat_period), without a catch-up burst.
                next_repeat = due + self.repeat_period
                if next_repeat <= now:
                    next_repeat = now + self.repeat_period
            self._wake.wait(max(next_repeat - time.monotonic(), 0.0))

    def _fire(self, silent_for: float | None):
        self.stalls += 1
        try:
            self.on_stall(silent_for)
        except Exception as error:
            if self.on_error is not None:
                try:
                    self.on_error(error)
                except Exception:  # the reporter failing must not stop the brakes
                    pass
