"""Processes the tests start: `python -m <module> args` in their own process group."""
import os
import signal
import sys
import time
from pathlib import Path

from av_td3_ros.tools.child_process import ChildProcess

REPO = Path(__file__).resolve().parents[1]


class PythonProcess:
    """A `python <python_args>` child, started in the repository, logging to a file."""

    def __init__(self, python_args, env, log_path):
        """Start the interpreter with `python_args`, stdout and stderr to `log_path`."""
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'wb')
        cmd = [sys.executable, *map(str, python_args)]
        self.child = ChildProcess(cmd, env=env, cwd=str(REPO), stdout=self._log)
        self.proc = self.child.process

    def output(self) -> str:
        """Return everything the process printed so far (also after stop)."""
        self._flush()
        return self.log_path.read_text(errors='replace')

    def _flush(self):
        if not self._log.closed:
            self._log.flush()

    def stacks(self, timeout=5.0) -> str:
        """Return the output after asking the process for every thread's stack (SIGUSR1).

        For an assertion message: a node that still logs but no longer handles messages
        shows where each thread waits.
        """
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
            self.wait_for_output('File "', timeout)
        return self.output()

    def wait_for_output(self, text, timeout=60.0) -> bool:
        """Wait until `text` appears in the output; return False on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.1)
        return False

    def wait(self, timeout=60.0):
        """Wait for the exit status."""
        try:
            return self.child.wait(timeout)
        finally:
            self._flush()

    def interrupt(self, timeout=15.0):
        """Stop it like Ctrl-C does; return its exit status."""
        try:
            return self.child.interrupt(timeout)
        finally:
            self._flush()

    def stop(self, timeout=10.0) -> int:
        """Send SIGINT, then SIGKILL to the whole group if it does not exit in time."""
        status = self.child.stop(timeout)
        self._log.close()
        return status

    def kill(self):
        """Kill it if it still runs."""
        self.child.kill()
        self._log.close()


class ModuleProcess(PythonProcess):
    """A `python -m <module> args` child (a node or a tool) logging to a file."""

    def __init__(self, module, args, env, log_path):
        """Start `module` with `args`, stdout and stderr to `log_path`."""
        super().__init__(['-m', module, *args], env, log_path)
