"""The one `main` every node of this package runs."""
from __future__ import annotations

import faulthandler
import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

from .callback_guard import guard_callback

__all__ = ['dump_stacks_on_sigusr1', 'guard_callback', 'run_node']


def dump_stacks_on_sigusr1():
    """Print every thread's Python stack to stderr on SIGUSR1 (`kill -USR1 <pid>`).

    A node that still logs but no longer handles messages shows where it waits.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def run_node(make_node: Callable[[], Node], args=None,
             make_executor: Callable[[], Executor] | None = None,
             before_destroy: Callable[[Node], None] | None = None):
    """Init rclpy, spin the node `make_node()` builds until shutdown, then clean up.

    `make_executor` builds the executor after rclpy is initialised (default: rclpy's
    single-threaded one); `before_destroy(node)` runs once spinning stopped and before the
    node is destroyed (e.g. to save state). Ctrl-C and SIGTERM end it quietly (rclpy turns
    them into ExternalShutdownException).
    """
    rclpy.init(args=args)
    dump_stacks_on_sigusr1()
    node = None
    executor = make_executor() if make_executor is not None else None
    try:
        node = make_node()
        if executor is None:
            rclpy.spin(node)
        else:
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if before_destroy is not None:
                before_destroy(node)
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        rclpy.try_shutdown()
