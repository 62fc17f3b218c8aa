"""Log a recurring problem at most once per period per key (steady clock, any thread).

Shared by the nodes and the ROS-free core (the Learner): it needs only a logger with
`info`/`warning`/`error` methods, an rclpy logger or a `logging.Logger`.
"""
from __future__ import annotations

import threading
import time

DEFAULT_PERIOD_S = 2.0
"""Seconds between two lines with the same key, unless the caller says otherwise."""


class ThrottledLog:
    """Log at most once per `period` seconds for each key.

    Keys name the problem (e.g. 'bad_frame_ego_vehicle'), so one noisy input cannot hide a
    different one. The time is the steady clock: sim time may stop, the log must not.
    """

    def __init__(self, logger, period: float = DEFAULT_PERIOD_S):
        """Wrap `logger` (rclpy or `logging`); `period` is the default spacing per key."""
        self.logger = logger
        self.period = period
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # the trainer logs from several executor threads

    def __call__(self, level: str, key: str, text: str, period: float | None = None) -> bool:
        """Log `text` at `level` ('info', 'warn', 'error', ...) unless `key` logged recently.

        Return whether it was logged.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < (self.period if period is None else period):
                return False
            self._last[key] = now
        getattr(self.logger, level)(text)
        return True
