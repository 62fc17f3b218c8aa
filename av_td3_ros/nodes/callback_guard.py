"""Keep a node alive through any exception raised by one of its message callbacks or timers.

rclpy lets an exception from a callback escape `spin`, which ends the process: one malformed
message would stop a car's brake controller. `guard_callback` wraps a callback so that an
exception is logged (throttled, with a short description of the message that caused it and
where it was raised), handed to an optional `on_error(msg)` (the driver brakes there) and then
dropped.
Imports no rclpy: the node only needs `get_logger()`.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable

LOG_PERIOD_S = 2.0
"""At most one log line per guarded callback per this many seconds (the rest are counted)."""


def describe_message(msg) -> str:
    """Return a one-line description of a ROS message: type, stamp, frame and shape fields."""
    if msg is None:
        return 'no message (timer)'
    parts = [type(msg).__name__]
    try:
        header = getattr(msg, 'header', None)
        if header is not None:
            stamp = header.stamp
            parts.append(f'stamp {int(stamp.sec)}.{int(stamp.nanosec):09d}')
            if header.frame_id:
                parts.append(f'frame {header.frame_id[:40]!r}')
        for field in ('encoding', 'height', 'width', 'step'):
            if hasattr(msg, field):
                parts.append(f'{field} {str(getattr(msg, field))[:40]}')
        for field in ('data', 'poses', 'status'):
            value = getattr(msg, field, None)
            if value is not None and hasattr(value, '__len__'):
                parts.append(f'{len(value)} {field}')
    except Exception as error:  # a description must never raise from the error path
        parts.append(f'(undescribable: {type(error).__name__})')
    return ', '.join(parts)


def _where(error: BaseException) -> str:
    """Return 'file:line in function' of the innermost frame that raised `error`."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return 'unknown place'
    last = frames[-1]
    return f'{last.filename.rsplit("/", 1)[-1]}:{last.lineno} in {last.name}'


class GuardedCallback:
    """`callback` wrapped so that no Exception from it reaches rclpy.spin (see module doc).

    Use it for every subscription, timer and service callback; `on_error(msg)` gets the
    message (None for a timer); `errors` counts the failures for diagnostics.
    """

    def __init__(self, node, callback: Callable, on_error: Callable | None = None):
        """Wrap `callback` of `node`."""
        self.node = node
        self.callback = callback
        self.on_error = on_error
        self.name = getattr(callback, '__name__', repr(callback))
        self.errors = 0
        """Exceptions caught so far."""
        self.last_error = ''
        """'<ExceptionType>: <message>' of the newest failure ('' before any)."""
        self._logged_at = None
        self._unlogged = 0

    def __call__(self, *args):
        """Run the callback; on an exception log it, call `on_error` and return normally.

        A service callback (request, response) gets its response object back on failure,
        so rclpy still answers the client.
        """
        try:
            return self.callback(*args)
        except Exception as error:
            msg = args[0] if args else None
            self._report(error, msg)
            if self.on_error is not None:
                try:
                    self.on_error(msg)
                except Exception as nested:
                    self._log(f'{self.name}: on_error handler failed too: '
                              f'{type(nested).__name__}: {nested} at {_where(nested)}')
            return args[1] if len(args) == 2 else None

    def _report(self, error: Exception, msg):
        self.errors += 1
        self.last_error = f'{type(error).__name__}: {error}'[:300]
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < LOG_PERIOD_S:
            self._unlogged += 1
            return
        suppressed = (f' ({self._unlogged} more since the last report)'
                      if self._unlogged else '')
        self._logged_at, self._unlogged = now, 0
        self._log(f'{self.name} failed on {describe_message(msg)}: {self.last_error} at '
                  f'{_where(error)}; the node goes on{suppressed}')

    def _log(self, text: str):
        try:
            self.node.get_logger().error(text)
        except Exception:  # a logger that fails (shut down) must not end the process either
            pass


guard_callback = GuardedCallback
