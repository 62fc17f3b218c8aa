"""The driver's parameters (their schema, `DRIVER`) and the config read from them once.

Apart from the node module and free of rclpy, so that bag_eval reads the very same
parameters, defaults and ranges from a YAML file without DDS.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.experts.route_expert import ExpertConfig
from av_td3_ros.nodes.schema import (
    EXPERT,
    POLICY_SPEC,
    ROUTE_SPACING,
    SPEC_FIELDS,
    Param,
    Schema,
    expert_config,
    policy_spec,
    same_named,
)
from av_td3_ros.policy.checkpoint import (
    CheckpointError,
    PolicySpec,
    read_metadata,
    resolve_checkpoint,
)
from av_td3_ros.policy.inference_onnx import BACKENDS


@dataclass(frozen=True)
class DriverConfig:
    """Everything the driver node reads from its parameters, once, at start."""

    role_name: str
    camera_topic: str
    odometry_topic: str
    route_topic: str
    control_topic: str
    episode_start_topic: str
    policy_in_use_topic: str
    camera_reliable: bool
    route_transient_local: bool
    checkpoint: str
    allow_random_policy: bool
    device: str
    allow_tf32: bool
    torch_threads: int
    backend: str
    frame_timeout: float
    stop_repeat_period: float
    odometry_timeout: float
    require_route: bool
    checkpoint_poll_period: float
    publish_debug: bool
    diagnostics_period: float
    spec: PolicySpec
    exploration: ExplorationConfig
    expert: ExpertConfig
    seed: int
    route_spacing: float
    policy_topic: str = ''  # policies from a trainer over DDS (policy_topic.py); '' = off
    warm_up_lead: float = 0.0  # s before the next frame to warm up (driving/frame_pacer.py)


_explore = partial(Param.of, ExplorationConfig)


def _under_role(suffix: str):
    """Return a default topic name under the role name (it follows role_name)."""
    return lambda values: suffix.format(role=values['role_name'])


DRIVER = Schema(
    'driver',
    Param('role_name', 'ego_vehicle', 'CARLA role name of the ego vehicle'),
    POLICY_SPEC,
    _explore('mode', 'eval (policy as is), explore (random, then noise), expert (the route '
             'expert drives) or dagger (expert with probability beta, else the policy)'),
    _explore('learning_starts', 'explore: uniform random actions until learning starts '
             '(frames)', 0, 10**9),
    _explore('noise_start', 'explore: initial Gaussian noise std', 0.0, 2.0),
    _explore('noise_end', 'explore: final Gaussian noise std', 0.0, 2.0),
    _explore('noise_decay_steps', 'explore: steps of linear noise decay', 0, 10**9),
    _explore('seed', 'seed of exploration noise and random init', 0, 2**31 - 1),
    _explore('beta_start', 'dagger: probability that the expert drives a frame, at the start',
             0.0, 1.0),
    _explore('beta_end', 'dagger: that probability after the decay', 0.0, 1.0),
    _explore('beta_decay_steps', 'dagger: frames of linear beta decay', 0, 10**9),
    Param('camera_topic', _under_role('/carla/{role}/rgb_front/image'), 'camera image topic'),
    Param('odometry_topic', _under_role('/carla/{role}/odometry'), 'odometry topic'),
    Param('route_topic', _under_role('/carla/{role}/waypoints'), 'route (nav_msgs/Path) topic'),
    Param('control_topic', _under_role('/carla/{role}/vehicle_control_cmd'),
          'CarlaEgoVehicleControl output topic'),
    Param('episode_start_topic', _under_role('/av_td3/{role}/episode_start'),
          'std_msgs/Header published at each episode start'),
    Param('policy_in_use_topic', _under_role('/av_td3/{role}/policy_in_use'),
          "std_msgs/String (latched): the file name of the checkpoint driving now, for the "
          "trainer's evaluations"),
    Param('camera_reliable', False,
          'reliable camera subscription (default best effort, keep last 1)'),
    Param('route_transient_local', True,
          'subscribe to the route with transient-local durability (latched)'),
    Param('checkpoint', '', 'policy .safetensors file, or a directory whose newest '
          'policy_<step>.safetensors is loaded and hot-reloaded'),
    Param('allow_random_policy', False,
          'drive a randomly initialised policy when no checkpoint is given'),
    Param('device', 'auto', 'auto (CUDA when available), cpu or cuda'),
    Param('allow_tf32', False, 'allow TensorFloat-32 in CUDA matmuls and convolutions '
          '(faster on Ampere+, actions differ from CPU by ~1e-4); false: exact float32'),
    Param('torch_threads', 1, 'torch CPU threads for inference', 1, 64),
    Param('backend', 'auto', f'inference backend, one of {BACKENDS}: auto (onnxruntime where '
          'it is installed and its actions on probe inputs are within 1e-4 of torch, checked '
          'at every load; else torch), torch (float32 bit for bit with training and bag_eval) '
          'or onnxruntime (CPU only, about 2x faster per frame)'),
    Param('frame_timeout', 0.5, 'brake when no camera frame arrives for this long (s, steady '
          'clock)', 0.01, 60.0),
    Param('stop_repeat_period', 0.1, 'while the camera is stalled, repeat the full brake this '
          'often (s)', 0.01, 10.0),
    Param('odometry_timeout', 1.0, 'brake when odometry is older than this (s, wall clock)',
          0.01, 60.0),
    Param('require_route', True, 'brake until a route has arrived'),
    ROUTE_SPACING,
    Param('checkpoint_poll_period', 1.0, 'how often to look for a new checkpoint (s); '
          '0 disables', 0.0, 3600.0),
    Param('publish_debug', True, 'publish the debug frame stack image and markers for rviz'),
    Param('diagnostics_period', 1.0, 'diagnostics period (s)', 0.1, 60.0),
    Param('policy_topic', '', 'load the policies a trainer publishes on this topic '
          '(e.g. /av_td3/policy); empty: off'),
    EXPERT,
    Param('warm_up_lead', 0.01, 'when frames arrive at a steady rate, run the network on '
          'the previous observation this long (s) before the next frame is due, so that the '
          'frame finds its weights in the CPU caches; 0: off', 0.0, 1.0),
)
"""Every driver parameter (docs/driver.md, generated; config/driver.yaml)."""


def driver_spec(values: dict, given: set[str]) -> PolicySpec:
    """Return the PolicySpec the driver runs with: the checkpoint's, except what was given.

    A checkpoint carries its spec, so the policy-spec parameters the user left at their
    defaults are taken from the checkpoint found at start (a file, or a directory's newest);
    the ones the user set are kept, and `load_policy` refuses a checkpoint that differs in
    them. Policies loaded later (hot reload, policy_topic) must match the spec in use.
    """
    spec = policy_spec(values)
    path = resolve_checkpoint(values['checkpoint']) if values['checkpoint'] else None
    if path is None:
        return spec
    try:
        found = PolicySpec.from_metadata(read_metadata(path))
    except CheckpointError:
        return spec  # the loader names the problem when it loads the file
    return spec.keeping({field for name in given for field in SPEC_FIELDS.get(name, ())}, found)


def config_from_values(values: dict, given: set[str]) -> DriverConfig:
    """Build the DriverConfig from checked parameter `values`; `given`: the names set."""
    return DriverConfig(**same_named(DriverConfig, values), spec=driver_spec(values, given),
                        exploration=ExplorationConfig(**same_named(ExplorationConfig, values)),
                        expert=expert_config(values))


def read_config(node) -> DriverConfig:
    """Declare the driver's parameters on `node` (an rclpy Node) and read them."""
    from av_td3_ros.nodes.node_params import declare, given  # rclpy: only the live node needs it
    return config_from_values(declare(node, DRIVER), given(node))
