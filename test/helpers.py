"""Test helpers shared by several test files that need no rclpy (and no ROS message package).

ROS-side helpers (nodes, messages, spinning) are in ros_helpers.py; fixtures in conftest.py.
"""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from av_td3_ros.tools.launch_runner import executable_module, parse_launch_file

REPO = Path(__file__).resolve().parents[1]
REPO_LAUNCH = REPO / 'launch'
CHANNELS = {'bgra8': 4, 'bgr8': 3, 'rgba8': 4, 'rgb8': 3, 'mono8': 1}
"""Bytes per pixel of the camera encodings the driver accepts."""


# --- routes and frames -------------------------------------------------------------------------

def _xy(point):
    """Return (x, y) of a tuple or of anything with .x and .y (MapPose, Pose2D)."""
    return (point.x, point.y) if hasattr(point, 'x') else (float(point[0]), float(point[1]))


def straight_route(start=(0.0, 0.0), end=None, *, points=20, direction=0.0, length=100.0,
                   spacing=2.0):
    """Return a straight route as an (n, 2) array of map points.

    With `end`: `points` evenly spaced points from `start` to `end`, both included (what a
    route planner returns). Without: from `start`, `length` m along `direction` (rad), one
    point every `spacing` m (the end included when `length` is a multiple of `spacing`).
    """
    x0, y0 = _xy(start)
    if end is not None:
        x1, y1 = _xy(end)
        i = np.arange(points)
        return np.stack([x0 + (x1 - x0) * i / (points - 1), y0 + (y1 - y0) * i / (points - 1)],
                        axis=1)
    s = np.arange(0.0, length + 1e-9, spacing)
    return np.stack([x0 + s * math.cos(direction), y0 + s * math.sin(direction)], axis=1)


def bgra_frame(k, height=600, width=800):
    """Return a deterministic bgra8 test frame (an array) that changes with `k`."""
    rows = np.arange(height, dtype=np.uint16)[:, None]
    cols = np.arange(width, dtype=np.uint16)[None, :]
    frame = np.empty((height, width, 4), np.uint8)
    frame[..., 0] = (rows + 3 * k) % 256
    frame[..., 1] = (cols + 5 * k) % 256
    frame[..., 2] = (rows + cols + 7 * k) % 256
    frame[..., 3] = 255
    return frame


def camera_frame(index, height=150, width=200, encoding='bgra8'):
    """Return a deterministic random camera frame (seeded by `index`) as an ImageView."""
    from av_td3_ros.policy.preprocessing import ImageView
    channels = 4 if encoding.endswith('a8') else 3
    rng = np.random.default_rng(index)
    data = rng.integers(0, 256, height * width * channels, dtype=np.uint8).tobytes()
    return ImageView(encoding, height, width, width * channels, data)


# --- objects with ROS message field names (the core reads messages by field name) ---------

def stamp(sec=0, nanosec=0):
    """Return an object with builtin_interfaces/Time's field names."""
    return SimpleNamespace(sec=sec, nanosec=nanosec)


def odometry(x=0.0, y=0.0, qx=0.0, qy=0.0, qz=0.0, qw=1.0, vx=5.0, vy=0.0, vz=0.0, sec=0,
             nanosec=0):
    """Return an object with nav_msgs/Odometry's field names (the core reads by name)."""
    vector = SimpleNamespace
    return SimpleNamespace(
        header=SimpleNamespace(stamp=stamp(sec, nanosec)),
        pose=vector(pose=vector(position=vector(x=x, y=y, z=0.0),
                                orientation=vector(x=qx, y=qy, z=qz, w=qw))),
        twist=vector(twist=vector(linear=vector(x=vx, y=vy, z=vz))))


def path(points):
    """Return an object with nav_msgs/Path's field names."""
    return SimpleNamespace(poses=[SimpleNamespace(pose=SimpleNamespace(
        position=SimpleNamespace(x=float(x), y=float(y), z=0.0))) for x, y in points])


def image(encoding='bgra8', height=12, width=16, step=None, data=None, sec=1, nanosec=0):
    """Return an object with sensor_msgs/Image's field names (good unless overridden)."""
    step = width * CHANNELS.get(encoding, 4) if step is None else step
    data = bytes(range(256)) * (height * step // 256 + 1) if data is None else data
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(sec, nanosec)),
                           encoding=encoding, height=height, width=width, step=step,
                           data=data[:height * step] if data is not None else data)


STRAIGHT = straight_route(length=58.0)
"""A good route for DriverInputs: 30 points 2 m apart along +x."""


# --- policies and commands ---------------------------------------------------------------------

class ConstantRunner:
    """Runner stand-in that returns a fixed action and counts its calls."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)
        self.calls = 0

    def act(self, frames, kinematics):
        """Return the fixed action."""
        self.calls += 1
        return self.action.copy()


def random_runner(seed, spec=None):
    """Return a PolicyRunner on the CPU for a random policy (torch seeded with `seed`)."""
    import torch

    from av_td3_ros.policy.checkpoint import PolicySpec
    from av_td3_ros.policy.inference import PolicyRunner
    from av_td3_ros.policy.networks import ActorPolicy
    torch.manual_seed(seed)
    return PolicyRunner(ActorPolicy((spec or PolicySpec()).network), torch.device('cpu'))


def is_full_brake(command):
    """Return whether a control command (message or Control) is the safe stop (0, 0, 1)."""
    return (command.steer, command.throttle, command.brake) == (0.0, 0.0, 1.0)


# --- parameter files and launch files ----------------------------------------------------------

def shipped_params(tmp_path, config_name, **overrides):
    """Write the shipped config/<config_name>.yaml with `overrides` into `tmp_path`; return it."""
    import yaml
    content = yaml.safe_load((REPO / 'config' / f'{config_name}.yaml').read_text())
    (section,) = content.values()
    section['ros__parameters'].update(overrides)
    path = tmp_path / f'{config_name}_test.yaml'
    path.write_text(yaml.safe_dump(content))
    return path


SMALL_TRAINER = dict(buffer_capacity=500, batch_size=8, checkpoint_every=4, state_every=4,
                     keep_checkpoints=2, log_period=1.0, health_every=4, torch_threads=1,
                     updates_per_step=1.0)
"""Trainer parameters for tests: a small buffer (the shipped one reserves ~0.7 GB of disk),
small batches, frequent checkpoints and logs, one torch thread (CI has 2 cores)."""


def trainer_params(tmp_path, **overrides):
    """Write the shipped trainer parameters with SMALL_TRAINER and `overrides`; return it."""
    return shipped_params(tmp_path, 'trainer', **{**SMALL_TRAINER, **overrides})


def launch_nodes(start_node, tmp_path, launch_file, **arguments):
    """Start every node of an XML launch file through `start_node`, as run_launch would."""
    import yaml
    description = parse_launch_file(launch_file, {k: str(v) for k, v in arguments.items()})
    started = []
    for index, spec in enumerate(description.nodes):
        overrides = tmp_path / f'launch_params_{index}.yaml'
        overrides.write_text(yaml.safe_dump({'/**': {'ros__parameters': spec.params}}))
        module = executable_module(spec.package, spec.executable)
        started.append(start_node(module, *spec.ros_arguments(str(overrides))[1:],
                                  name=spec.name, args=spec.args))
    return description, started


def require_metadrive_venv():
    """Fail (not skip) without the MetaDrive venv: CI makes it, a skip would hide the tests."""
    from av_td3_ros.sim.metadrive_client import default_python
    python = default_python()
    assert python.is_file(), (
        f'no MetaDrive venv ({python}): run `bash scripts/setup.sh --metadrive`, or deselect '
        'with -m "not metadrive"')
