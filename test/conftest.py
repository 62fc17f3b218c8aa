"""Shared pytest fixtures (isolated ROS 2 environments, node subprocesses) and the `ros` mark."""
import ast
import fcntl
import functools
import itertools
import os
import sys
import tempfile
from pathlib import Path

import pytest
from processes import ModuleProcess

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent
_domain_counter = itertools.count()
DOMAINS = range(1, 101)
"""ROS domain IDs the tests use (all inside the range every RMW maps to valid ports)."""
_DOMAIN_LOCKS = Path(tempfile.gettempdir()) / 'av_td3_ros_test_domains'


def claim_domain(start: int):
    """Return (domain, open lock file) for the first free domain from `start` on, cyclically.

    A domain is claimed with an exclusive flock on a file named after it, held until the
    file is closed (or the process dies: the kernel drops the lock), so two test suites
    running at once on one machine never share a domain. Without a usable lock directory
    (or lock files), the domain at `start` is returned unlocked.
    """
    try:
        _DOMAIN_LOCKS.mkdir(mode=0o777, exist_ok=True)
    except OSError:
        return start, None
    offset = DOMAINS.index(start)
    held_by_others = 0
    for step in range(len(DOMAINS)):
        domain = DOMAINS[(offset + step) % len(DOMAINS)]
        try:
            handle = open(_DOMAIN_LOCKS / f'{domain}.lock', 'a')
        except OSError:
            continue  # e.g. another user's lock file: not ours to use
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            held_by_others += 1
            continue
        return domain, handle
    if held_by_others == 0:
        return start, None  # no lock file could be opened at all: run unlocked
    raise RuntimeError(f'every ROS domain in {DOMAINS} is claimed by other test runs')


def _venv_prefix() -> str:
    """Return the prefix whose share/ holds av_td3_ros and carla_msgs (the running venv)."""
    return sys.prefix


def _search_path(variable: str, entry: str, first: bool) -> str:
    """Return `variable`'s path list with `entry` added, keeping every entry already there.

    colcon test and a sourced ROS install set AMENT_PREFIX_PATH and PYTHONPATH for the
    package under test and for rclpy: dropping them would hide both from node subprocesses.
    """
    entries = [part for part in os.environ.get(variable, '').split(os.pathsep) if part]
    if entry in entries:
        return os.pathsep.join(entries)
    return os.pathsep.join([entry, *entries] if first else [*entries, entry])


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Give each test its own ROS_DOMAIN_ID, log dir and localhost-only discovery.

    Yields the environment dict to pass to node subprocesses; the same settings are applied
    to this process so in-process rclpy contexts join the same domain. The domain stays
    claimed (`claim_domain`) until the test's teardown.
    """
    # Each test starts from the next domain, so a slow-to-exit child of the previous test
    # is not in the new one's domain; the claim keeps concurrent suites apart.
    start = DOMAINS[(os.getpid() * 7 + next(_domain_counter)) % len(DOMAINS)]
    domain, lock = claim_domain(start)
    log_dir = tmp_path / 'ros_log'
    log_dir.mkdir()
    settings = {
        'ROS_DOMAIN_ID': str(domain),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_LOG_DIR': str(log_dir),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO / 'config' / 'fastdds_large_images.xml'),
        # A colcon or ROS install's share/ comes first (it is what `colcon test` checks); the
        # venv (carla_msgs, av_td3_ros from scripts/setup.sh) is the fallback.
        'AMENT_PREFIX_PATH': _search_path('AMENT_PREFIX_PATH', _venv_prefix(), first=False),
        # Node subprocesses run this checkout's code, whatever else is on the path.
        'PYTHONPATH': _search_path('PYTHONPATH', str(REPO), first=True),
        'PYTHONUNBUFFERED': '1',
        'OMP_NUM_THREADS': '1',
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv('FASTDDS_BUILTIN_TRANSPORTS', raising=False)
    env = dict(os.environ)
    env.update(settings)
    yield env
    if lock is not None:
        lock.close()


@pytest.fixture
def start_process(ros_env, tmp_path):
    """Start `python -m <module> args` children in the test's domain; stop them afterwards."""
    started = []

    def _start(module, args, label):
        child = ModuleProcess(module, args, ros_env, tmp_path / f'{label}_{len(started)}.log')
        started.append(child)
        return child

    yield _start
    for child in started:
        child.stop()


@pytest.fixture
def start_node(start_process):
    """Start a node module with `[args...] --ros-args ...`."""
    def _start(module, *ros_args, name=None, args=()):
        return start_process(module, [*args, '--ros-args', *ros_args],
                             name or module.rsplit('.', 1)[-1])
    return _start


@pytest.fixture
def start_tool(start_process):
    """Start a command-line tool module with plain arguments."""
    return lambda module, *args: start_process(module, args, 'tool')


@pytest.fixture
def rclpy_context(ros_env):
    """Yield an initialised rclpy Context in the test's domain, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    yield context
    context.try_shutdown()


@pytest.fixture
def make_probe(rclpy_context):
    """Yield `make(cls, *args, **kwargs)`: a test-side node `cls(rclpy_context, ...)`.

    Whatever it makes (anything with `close()`, e.g. a ros_helpers.SpinningNode) is closed
    after the test, before the context is shut down, newest first.
    """
    made = []

    def make(cls, *args, **kwargs):
        probe = cls(rclpy_context, *args, **kwargs)
        made.append(probe)
        return probe

    yield make
    for probe in reversed(made):
        probe.close()


@pytest.fixture
def bridge(make_probe):
    """Return a ros_helpers.FakeBridge (the CARLA bridge's topics) in the test's domain."""
    from ros_helpers import FakeBridge
    return make_probe(FakeBridge)


# --- the `ros` mark: tests that need rclpy over DDS or start node processes -------------------

ROS_FIXTURE = 'ros_env'
"""Every fixture that joins a ROS domain or starts a node (rclpy_context, start_node,
start_tool, start_process, make_probe, bridge) depends on this one."""


def _is_ros_package(module):
    """Return whether importing `module` loads rclpy or a ROS interface package."""
    root = module.split('.')[0]
    return root in ('rclpy', 'rosidl_runtime_py') or root.endswith(('_msgs', '_srvs',
                                                                    '_interfaces'))


@functools.cache
def imports_ros(path):
    """Return whether the module at `path` imports rclpy or ROS messages at module level.

    Directly, or through a helper module of test/ (ros_helpers.py, carla_fake_bridge.py) that
    does. Imports inside functions do not count: they cost nothing until a test runs them.
    """
    tree = ast.parse(Path(path).read_text(), str(path))
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            modules = [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
            modules = [statement.module]
        else:
            continue
        for module in modules:
            local = TEST_DIR / f'{module.split(".")[0]}.py'
            if _is_ros_package(module) or (local.is_file() and imports_ros(local)):
                return True
    return False


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config, items):
    """Mark `ros` every test that uses a ROS fixture or lives in a module importing ROS.

    `python -m pytest -m "not ros"` then runs the core tests only (docs/testing.md).
    """
    for item in items:
        if (ROS_FIXTURE in getattr(item, 'fixturenames', ())
                or imports_ros(str(item.path))):
            item.add_marker(pytest.mark.ros)
