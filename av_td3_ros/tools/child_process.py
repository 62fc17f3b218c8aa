"""Start a child process in its own process group, tied to its parent's life; stop it.

A child gets its own session so that Ctrl-C reaches the runner only, which then stops each node
in order. On Linux it also gets SIGTERM when its parent dies, so that a SIGKILLed runner leaves
no nodes publishing on the DDS domain. The kernel sends that signal when the *thread* that
started the child exits: start children from a thread that outlives them (the main thread).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent():
    """Return a preexec_fn that asks for SIGTERM when this process dies (None off Linux)."""
    if not sys.platform.startswith('linux'):
        return None
    # Looked up here, in the parent: between fork and exec the child should only call it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    death_signal = int(signal.SIGTERM)  # rclpy nodes shut down quietly on it

    def set_death_signal():
        prctl(_PR_SET_PDEATHSIG, death_signal)
        if os.getppid() != parent:  # the parent died before the request: no signal comes
            os._exit(1)
    return set_death_signal


class ChildProcess:
    """One child process in its own process group that dies with its parent (Linux)."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None,
                 cwd: str | None = None, stdout=None, text: bool = False):
        """Start `command`; stderr goes where stdout goes (with `text`, line-buffered text)."""
        self.command = command
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent(), text=text,
                                        bufsize=1 if text else -1)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; raise subprocess.TimeoutExpired after `timeout`."""
        return self.process.wait(timeout=timeout)

    def signal_group(self, sig: int):
        """Send `sig` to the child's process group if the child still runs."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:  # it exited after the poll
                pass

    def interrupt(self, timeout: float | None = None) -> int:
        """Stop it as Ctrl-C does and return its exit status (TimeoutExpired after timeout)."""
        self.signal_group(signal.SIGINT)
        return self.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT the group; SIGKILL it if it does not exit within `timeout`; return status."""
        try:
            return self.interrupt(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL the group and return the exit status."""
        self.signal_group(signal.SIGKILL)
        return self.wait()
