"""Shared pytest fixtures: isolated ROS 2 environments and node subprocesses."""
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_domain_counter = itertools.count()


def _venv_prefix() -> str:
    """Return the prefix whose share/ holds av_td3_ros and carla_msgs (the running venv)."""
    return sys.prefix


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Give each test its own ROS_DOMAIN_ID, log dir and localhost-only discovery.

    Returns the environment dict to pass to node subprocesses; the same settings are applied
    to this process so in-process rclpy contexts join the same domain.
    """
    # Spread domains by pid so two concurrent pytest runs on one machine rarely collide.
    domain = 1 + (os.getpid() * 7 + next(_domain_counter)) % 100
    log_dir = tmp_path / 'ros_log'
    log_dir.mkdir()
    settings = {
        'ROS_DOMAIN_ID': str(domain),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_LOG_DIR': str(log_dir),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO / 'config' / 'fastdds_large_images.xml'),
        'AMENT_PREFIX_PATH': _venv_prefix(),
        'PYTHONPATH': str(REPO),
        'PYTHONUNBUFFERED': '1',
        'OMP_NUM_THREADS': '1',
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)
    env = dict(os.environ)
    env.update(settings)
    return env


class NodeProcess:
    """A ROS node started as `python -m <module>` in its own process group."""

    def __init__(self, module, ros_args, env, log_path):
        """Start `module` with `--ros-args` arguments, logging to `log_path`."""
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'wb')
        cmd = [sys.executable, '-m', module, '--ros-args', *ros_args]
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """Return everything the process printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors='replace')

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

    def stop(self, timeout=10.0) -> int:
        """Send SIGINT, then SIGKILL to the whole group if it does not exit in time."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_node(ros_env, tmp_path):
    """Start node modules as subprocesses in the test's ROS domain; stop them all afterwards."""
    started = []

    def _start(module, *ros_args, name=None):
        log = tmp_path / f'{name or module.rsplit(".", 1)[-1]}_{len(started)}.log'
        node = NodeProcess(module, list(ros_args), ros_env, log)
        started.append(node)
        return node

    yield _start
    for node in started:
        node.stop()


@pytest.fixture
def rclpy_context(ros_env):
    """Yield an initialised rclpy Context in the test's domain, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    yield context
    context.try_shutdown()
