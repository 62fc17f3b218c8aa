"""The one `main` every node of this package runs."""
from __future__ import annotations

import faulthandler
import signal
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from av_td3_ros.nodes.callback_guard import guard_callback

__all__ = ['guard_callback', 'run_node', 'shutting_down']

SHUTDOWN_SETTLE_S = 2.0
"""How long an executor error may precede its context's shutdown and still be the shutdown's."""


def shutting_down(context, settle_s: float = SHUTDOWN_SETTLE_S) -> bool:
    """Return whether `context` is shut down, or finishes shutting down within `settle_s`.

    rcl_shutdown stops the middleware first and marks the context invalid only afterwards.
    A take that fails in between (rclpy: "Unable to convert call argument") sees a context
    that still reads as ok, so one look is not enough. Polls on the steady clock.
    """
    deadline = time.monotonic() + settle_s
    while context.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def spin_until_shutdown(node: Node):
    """Spin `node` until its context shuts down; log and survive any other executor error.

    Callbacks are guarded (`guard_callback`), so an error here comes from the executor
    itself, e.g. a message rclpy could not take. One such message must not end a node that
    brakes a car; the error costs at most `SHUTDOWN_SETTLE_S` of spinning.
    """
    while True:
        try:
            rclpy.spin(node)
            return
        except (KeyboardInterrupt, ExternalShutdownException):
            return
        except Exception as error:
            if shutting_down(node.context):
                return  # Ctrl-C/SIGTERM raced the executor: the same quiet shutdown
            node.get_logger().error(
                f'executor error, spinning on: {type(error).__name__}: {error}')


def run_node(make_node: Callable[[], Node], args=None,
             before_destroy: Callable[[Node], None] | None = None):
    """Init rclpy, spin the node `make_node()` builds until shutdown, then clean up.

    `before_destroy(node)` runs once spinning stopped and before the node is destroyed (e.g.
    to save state). Ctrl-C and SIGTERM end it quietly (rclpy turns them into
    ExternalShutdownException, or the executor fails while the context shuts down).
    """
    rclpy.init(args=args)
    # `kill -USR1 <pid>` prints every thread's stack: where a node that logs but no longer
    # handles messages waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    node = None
    try:
        node = make_node()
        spin_until_shutdown(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C or SIGTERM while the node was being built
    finally:
        if node is not None:
            if before_destroy is not None:
                before_destroy(node)
            node.destroy_node()
        rclpy.try_shutdown()
