"""The driver's parameters: declared with descriptions and ranges, read once into a config.

Apart from the node module so that bag_eval reads the very same parameters, defaults and
ranges without importing rclpy (ParameterReader needs only `declare_parameter`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..driving.inference_onnx import BACKENDS
from ..driving.pipeline import ExplorationConfig
from ..learning.checkpoint import PolicySpec
from .node_params import ParameterReader, read_policy_spec


@dataclass(frozen=True)
class DriverConfig:
    """Everything the driver node reads from its parameters, once, at start."""

    role_name: str
    camera_topic: str
    odometry_topic: str
    route_topic: str
    control_topic: str
    episode_start_topic: str
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
    seed: int
    policy_topic: str = ''  # policies from a trainer over DDS (policy_topic.py); '' = off


def read_config(node) -> DriverConfig:
    """Declare the driver's parameters (with descriptions and ranges) and read them.

    `node` is the driver node, or anything with its `declare_parameter` (bag_eval's
    ParameterSource).
    """
    p = ParameterReader(node)
    role = p.string('role_name', 'ego_vehicle', 'CARLA role name of the ego vehicle')
    base = f'/carla/{role}'
    spec = read_policy_spec(p)
    exploration = ExplorationConfig(
        mode=p.string('mode', 'eval', 'eval (policy as is), explore (random, then noise), '
                      'expert (the route expert drives) or dagger (expert with probability '
                      'beta, else the policy)'),
        random_steps=p.integer('random_steps', 10000, 'explore: uniform random actions for '
                               'the first steps', 0, 10**9),
        noise_start=p.floating('noise_start', 0.3, 'explore: initial Gaussian noise std',
                               0.0, 2.0),
        noise_end=p.floating('noise_end', 0.1, 'explore: final Gaussian noise std', 0.0, 2.0),
        noise_decay_steps=p.integer('noise_decay_steps', 20000, 'explore: steps of linear '
                                    'noise decay', 0, 10**9),
        seed=p.integer('seed', 0, 'seed of exploration noise and random init', 0, 2**31 - 1),
        beta_start=p.floating('beta_start', 1.0, 'dagger: probability that the expert drives '
                              'a frame, at the start', 0.0, 1.0),
        beta_end=p.floating('beta_end', 0.0, 'dagger: that probability after the decay',
                            0.0, 1.0),
        beta_decay_steps=p.integer('beta_decay_steps', 20000, 'dagger: frames of linear beta '
                                   'decay', 0, 10**9))
    return DriverConfig(
        role_name=role,
        camera_topic=p.string('camera_topic', f'{base}/rgb_front/image', 'camera image topic'),
        odometry_topic=p.string('odometry_topic', f'{base}/odometry', 'odometry topic'),
        route_topic=p.string('route_topic', f'{base}/waypoints', 'route (nav_msgs/Path) topic'),
        control_topic=p.string('control_topic', f'{base}/vehicle_control_cmd',
                               'CarlaEgoVehicleControl output topic'),
        episode_start_topic=p.string('episode_start_topic', f'/av_td3/{role}/episode_start',
                                     'std_msgs/Header published at each episode start'),
        camera_reliable=p.boolean('camera_reliable', False, 'reliable camera subscription '
                                  '(default best effort, keep last 1)'),
        route_transient_local=p.boolean('route_transient_local', True, 'subscribe to the '
                                        'route with transient-local durability (latched)'),
        checkpoint=p.string('checkpoint', '', 'policy .safetensors file, or a directory whose '
                            'newest policy_<step>.safetensors is loaded and hot-reloaded'),
        allow_random_policy=p.boolean('allow_random_policy', False, 'drive a randomly '
                                      'initialised policy when no checkpoint is given'),
        device=p.string('device', 'auto', 'auto (CUDA when available), cpu or cuda'),
        allow_tf32=p.boolean('allow_tf32', False, 'allow TensorFloat-32 in CUDA matmuls and '
                             'convolutions (faster on Ampere+, actions differ from CPU by '
                             '~1e-4); false: exact float32'),
        torch_threads=p.integer('torch_threads', 1, 'torch CPU threads for inference', 1, 64),
        backend=p.string('backend', 'torch', f'inference backend, one of {BACKENDS}: torch '
                         '(float32 bit for bit with training and bag_eval) or onnxruntime '
                         '(CPU only, about 2x faster per frame, actions within 1e-4)'),
        frame_timeout=p.floating('frame_timeout', 0.5, 'brake when no camera frame arrives for '
                                 'this long (s, steady clock)', 0.01, 60.0),
        stop_repeat_period=p.floating('stop_repeat_period', 0.1, 'while the camera is '
                                      'stalled, repeat the full brake this often (s)',
                                      0.01, 10.0),
        odometry_timeout=p.floating('odometry_timeout', 1.0, 'brake when odometry is older '
                                    'than this (s, wall clock)', 0.01, 60.0),
        require_route=p.boolean('require_route', True, 'brake until a route has arrived'),
        checkpoint_poll_period=p.floating('checkpoint_poll_period', 1.0, 'how often to look '
                                          'for a new checkpoint (s); 0 disables', 0.0, 3600.0),
        publish_debug=p.boolean('publish_debug', True, 'publish the debug frame stack image and '
                                'markers for rviz'),
        diagnostics_period=p.floating('diagnostics_period', 1.0, 'diagnostics period (s)',
                                      0.1, 60.0),
        spec=spec, exploration=exploration, seed=exploration.seed,
        policy_topic=p.string('policy_topic', '', 'load the policies a trainer publishes on '
                              'this topic (e.g. /av_td3/policy); empty: off'))
