"""The one `main` every node of this package runs."""
from __future__ import annotations

import faulthandler
import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from .callback_guard import guard_callback

__all__ = ['dump_stacks_on_sigusr1', 'guard_callback', 'run_node']


def dump_stacks_on_sigusr1():
    """Print every thread's Python stack to stderr on SIGUSR1 (`kill -USR1 <pid>`).

    A node that still logs but no longer handles messages shows where it waits.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def run_node(make_node: Callable[[], Node], args=None,
             before_destroy: Callable[[Node], None] | None = None):
    """Init rclpy, spin the node `make_node()` builds until shutdown, then clean up.

    `before_destroy(node)` runs once spinning stopped and before the node is destroyed (e.g.
    to save state). Ctrl-C and SIGTERM end it quietly (rclpy turns them into
    ExternalShutdownException).
    """
    rclpy.init(args=args)
    dump_stacks_on_sigusr1()
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok():
            raise
        # Ctrl-C/SIGTERM shut the context down while the executor was taking a message:
        # rclpy then fails inside take_message. That is the same quiet shutdown.
    finally:
        if node is not None:
            if before_destroy is not None:
                before_destroy(node)
            node.destroy_node()
        rclpy.try_shutdown()
