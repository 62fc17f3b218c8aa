"""Trainer node: experience from the ROS graph -> replay buffer -> TD3 updates -> checkpoints.

Per vehicle (role name) it subscribes to the camera, odometry, route, the command the driver
sent (or vehicle_status.control), collision and lane-invasion events and the episode topics,
pairs them into transitions with `TransitionAssembler`, and writes them to the memory-mapped
replay buffer in run_dir. TD3 updates run in a worker thread, so camera callbacks are never
blocked; every `checkpoint_every` updates a policy file lands atomically in
run_dir/checkpoints, where drivers pick it up. Episodes the trainer ends (collision, lateral
deviation, route completed, step limit) are reset through /av_td3/<role>/reset_episode.

No message ends the process: every subscription and timer callback is wrapped by
`guard_callback` (an exception is logged, throttled, with the message, and the node goes on);
unusable routes and odometry are refused on arrival and logged. At start-up the temp files of
writers killed mid-write are removed (the replay buffer's lock makes this process the run
directory's only writer), and a policy file name is never rewritten: a trainer resumed from an
older state keeps the `policy_<step>` files a previous run wrote and writes new names only.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from carla_msgs.msg import (
    CarlaCollisionEvent,
    CarlaEgoVehicleControl,
    CarlaEgoVehicleStatus,
    CarlaLaneInvasionEvent,
)
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from ..driving.control import control_to_action
from ..driving.pipeline import ExplorationConfig
from ..driving.preprocessing import ImageFormatError, ImageView, to_gray
from ..driving.ros_conversions import (
    command_from_control_msg,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_to_ns,
)
from ..learning.checkpoint import (
    CHECKPOINT_DECIDES,
    CHECKPOINT_SUBDIR,
    POLICY_PATTERN,
    TRAINING_STATE,
    PolicySpec,
    latest_policy,
    load_policy,
    policy_path,
    prune_policies,
    read_metadata,
    read_safetensors,
    remove_stale_run_temps,
    save_policy_state,
    write_atomic,
)
from ..learning.config_diff import config_differences
from ..learning.mc_returns import MonteCarloReturns
from ..learning.replay_buffer import ReplayBuffer
from ..learning.reward import RewardConfig
from ..learning.td3 import TD3, TD3Config, metrics_to_floats
from ..learning.transitions import (
    AssemblerOutput,
    EpisodeConfig,
    EpisodeEnd,
    EpisodeStart,
    Transition,
    TransitionAssembler,
)
from ..sim.episode_end import parse_episode_end
from ..sim.expert import expert_actions
from .callback_guard import guard_callback
from .node_main import run_node
from .node_params import declare
from .policy_topic import PolicyBroadcaster
from .schema import POLICY_SPEC, Param, Schema, default_of, policy_spec


@dataclass(frozen=True)
class TrainerConfig:
    """Everything the trainer node reads from its parameters, once."""

    run_dir: Path
    vehicles: list
    control_source: str
    device: str
    torch_threads: int
    seed: int
    resume: bool
    spec: PolicySpec
    td3: TD3Config
    buffer_capacity: int
    buffer_kinematics_dtype: str
    learning_starts: int
    updates_per_step: float
    checkpoint_every: int
    keep_checkpoints: int
    state_every: int
    log_period: float
    health_every: int
    tensorboard: bool
    episode: EpisodeConfig
    reward: RewardConfig
    reset_timeout: float
    camera_topic: str = '/carla/{role}/rgb_front/image'  # {role}: each vehicle's role name
    policy_topic: str = '/av_td3/policy'  # every saved policy is published here ('' = off)
    initial_policy: str = ''  # a fresh run's actor starts from this policy ('' = random init)
    warmup_targets: str = 'mc'  # critic targets during critic_warmup_updates: mc or td


def _from(config_cls, field: str, name: str | None = None):
    """Return a Param named `name` (default `field`) whose default is `config_cls.field`'s."""
    def param(description: str, low=None, high=None) -> Param:
        return Param(name or field, default_of(config_cls, field), description, low, high)
    return param


TRAINER = Schema(
    'trainer',
    POLICY_SPEC,
    Param('seed', 0, 'seed of networks, sampling and noise', 0, 2**31 - 1),
    _from(TD3Config, 'device')('auto, cpu or cuda'),
    _from(TD3Config, 'gamma')('discount factor', 0.0, 1.0),
    _from(TD3Config, 'tau')('polyak rate, SB3 meaning', 0.0, 1.0),
    _from(TD3Config, 'actor_lr')('actor Adam learning rate', 0.0, 1.0),
    _from(TD3Config, 'critic_lr')('critic Adam learning rate', 0.0, 1.0),
    _from(TD3Config, 'batch_size')('transitions per update', 1, 65536),
    _from(TD3Config, 'policy_frequency')('policy delay', 1, 1000),
    _from(TD3Config, 'policy_noise')('target smoothing noise std', 0.0, 10.0),
    _from(TD3Config, 'noise_clip')('target smoothing noise clip', 0.0, 10.0),
    _from(TD3Config, 'actor_grad_clip')('actor max grad norm (0: off)', 0.0, 1e6),
    _from(TD3Config, 'critic_grad_clip')('critic max grad norm (0: off)', 0.0, 1e6),
    _from(TD3Config, 'actor_pretanh_penalty')(
        'weight of mean(pre-tanh logits^2) in the actor loss', 0.0, 1e3),
    _from(TD3Config, 'target_encoders')('target copies of both CNNs'),
    # 'auto', not TD3Config's fp32: the node picks bf16 where the hardware computes it
    # natively; code that builds a TD3Config itself keeps exact fp32.
    Param('precision', 'auto', 'update precision: fp32, bf16, or auto (bf16 where the CPU/GPU '
          'computes it natively)'),
    _from(TD3Config, 'critic_warmup_updates')('critic updates before the first actor update',
                                              0, 10**9),
    _from(TD3Config, 'bc_weight')('TD3+BC: weight of the route expert cloning term in the '
                                  'actor loss (0: plain TD3)', 0.0, 1e3),
    _from(TD3Config, 'bc_alpha')("TD3+BC's alpha: the normalised Q term's weight", 0.0, 1e3),
    _from(EpisodeConfig, 'max_steps', 'max_episode_steps')('step limit (truncation)', 1,
                                                           10**9),
    _from(EpisodeConfig, 'max_lateral_deviation')('terminate beyond this distance from the '
                                                  'route (m)', 0.0, 1e6),
    _from(EpisodeConfig, 'goal_tolerance')('route completed within this distance of its end '
                                           '(m)', 0.0, 1e6),
    _from(EpisodeConfig, 'event_window')('seconds (frame stamps) each step waits for late '
                                         'collision / lane-invasion events', 0.0, 10.0),
    _from(RewardConfig, 'efficiency_weight')('reward weight', -1e3, 1e3),
    _from(RewardConfig, 'lane_keeping_weight')('reward weight', -1e3, 1e3),
    _from(RewardConfig, 'comfort_weight')('reward weight', -1e3, 1e3),
    _from(RewardConfig, 'safety_weight')('reward weight', -1e3, 1e3),
    _from(RewardConfig, 'progress_weight')('reward weight', -1e3, 1e3),
    _from(RewardConfig, 'target_speed')('efficiency target speed (m/s)', 0.1, 100.0),
    _from(RewardConfig, 'lane_invasion_penalty')('per lane invasion', -1e4, 0.0),
    _from(RewardConfig, 'off_road_penalty')('beyond max_lateral_deviation', -1e4, 0.0),
    Param('run_dir', 'runs/default', 'replay buffer, checkpoints, logs'),
    Param('vehicles', ['ego_vehicle'], 'role names of the vehicles that feed this trainer'),
    Param('control_source', 'command', 'command (vehicle_control_cmd) or vehicle_status '
          '(vehicle_status.control)'),
    Param('torch_threads', 2, 'torch CPU threads', 1, 256),
    Param('resume', True, 'continue from run_dir/training_state if present'),
    Param('buffer_capacity', 100000, 'replay capacity (transitions)', 16, 10**9),
    Param('buffer_kinematics_dtype', 'float16', 'float16 or float32 kinematics in the buffer'),
    # The driver's random phase (random_steps) is the trainer's wait: one number.
    Param('learning_starts', default_of(ExplorationConfig, 'random_steps'),
          'transitions before updates', 0, 10**9),
    Param('updates_per_step', 1.0, 'update-to-data ratio', 0.0, 1000.0),
    Param('checkpoint_every', 5000, 'updates between policy checkpoints', 1, 10**9),
    Param('keep_checkpoints', 5, 'policy files kept', 1, 10**6),
    Param('state_every', 5000, 'updates between training-state saves', 1, 10**9),
    Param('log_period', 10.0, 'seconds between progress lines', 0.1, 3600.0),
    Param('health_every', 1000, 'updates between activation-health checks', 1, 10**9),
    Param('tensorboard', True, 'write TensorBoard logs to run_dir/tb'),
    Param('reset_timeout', 10.0, 'seconds to wait for the reset service', 0.1, 600.0),
    Param('camera_topic', TrainerConfig.camera_topic, 'camera topic; {role} is replaced by the '
          'role name'),
    Param('policy_topic', TrainerConfig.policy_topic, 'publish each saved policy here for '
          'drivers on other machines; empty: off'),
    Param('initial_policy', TrainerConfig.initial_policy, 'policy checkpoint a fresh run '
          'starts its actor from (e.g. an imitation policy); empty: random'),
    Param('warmup_targets', TrainerConfig.warmup_targets, 'critic targets during the warm-up: '
          'mc (Monte Carlo returns of finished episodes) or td'),
)
"""Every trainer parameter (README "Trainer parameters"; config/trainer.yaml)."""


def config_from_values(v: dict) -> TrainerConfig:
    """Build the TrainerConfig from checked parameter values `v`."""
    spec = policy_spec(v)

    def pick(*names):
        return {name: v[name] for name in names}

    td3 = TD3Config(
        **pick('gamma', 'tau', 'actor_lr', 'critic_lr', 'batch_size', 'policy_frequency',
               'policy_noise', 'noise_clip', 'actor_pretanh_penalty', 'target_encoders',
               'precision', 'critic_warmup_updates', 'bc_weight', 'bc_alpha', 'device',
               'seed'),
        # 0 disables clipping (TD3Config takes None for that).
        actor_grad_clip=v['actor_grad_clip'] or None,
        critic_grad_clip=v['critic_grad_clip'] or None,
        frame_scale=spec.preprocessing.scale)
    episode = EpisodeConfig(max_steps=v['max_episode_steps'],
                            **pick('max_lateral_deviation', 'goal_tolerance', 'event_window'))
    reward = RewardConfig(
        **pick('efficiency_weight', 'lane_keeping_weight', 'comfort_weight', 'safety_weight',
               'progress_weight', 'target_speed', 'lane_invasion_penalty',
               'off_road_penalty'),
        lateral_tolerance=episode.max_lateral_deviation)
    return TrainerConfig(
        run_dir=Path(v['run_dir']), spec=spec, td3=td3, episode=episode, reward=reward,
        **pick('vehicles', 'control_source', 'device', 'torch_threads', 'seed', 'resume',
               'buffer_capacity', 'buffer_kinematics_dtype', 'learning_starts',
               'updates_per_step', 'checkpoint_every', 'keep_checkpoints', 'state_every',
               'log_period', 'health_every', 'tensorboard', 'reset_timeout', 'camera_topic',
               'policy_topic', 'initial_policy', 'warmup_targets'))


def read_config(node: Node) -> TrainerConfig:
    """Declare the trainer's parameters (descriptions, ranges) and read them."""
    return config_from_values(declare(node, TRAINER))


def with_initial_policy_decisions(config: TrainerConfig) -> TrainerConfig:
    """Return `config` with the spec fields a checkpoint decides taken from initial_policy.

    What the actor sees of the kinematic vector (`CHECKPOINT_DECIDES`) belongs to the policy:
    a camera-profile start must go on training a camera-profile actor, now and on resume.
    """
    if not config.initial_policy:
        return config
    start = PolicySpec.from_metadata(read_metadata(config.initial_policy))
    network = config.spec.network
    for section, name in CHECKPOINT_DECIDES:
        if section == 'network':
            network = replace(network, **{name: getattr(start.network, name)})
    return replace(config, spec=replace(config.spec, network=network))


def resume_differences(spec: PolicySpec, metadata: dict, td3_metadata: dict) -> list[str]:
    """Name every PolicySpec field in which a training state differs from `spec`.

    A state holds its whole spec; older states hold only the network config and the TD3
    frame_scale, so only those are compared for them.
    """
    ours = spec.to_dict()
    if 'spec' in metadata:
        saved = json.loads(metadata['spec'])
    else:
        scale = td3_metadata.get('td3_config', {}).get('frame_scale')
        saved = {**ours, 'network': td3_metadata.get('network_config', {}),
                 'preprocessing': {**ours['preprocessing'], 'scale': scale}}
    return config_differences(ours, saved, ('trainer', 'training state'))


class VehicleFeed:
    """One vehicle's subscriptions, assembler and reset client."""

    def __init__(self, node: TrainerNode, role: str, group):
        """Subscribe to `role`'s topics in callback group `group`."""
        self.node, self.role = node, role
        config = node.config
        self.assembler = TransitionAssembler(config.spec.features, config.reward,
                                             config.episode)
        self.frame_stamps: list[int] = []  # recent frame stamps (vehicle_status pairing)
        self.resetting = False
        self.reset_requested: float | None = None  # monotonic time of the last request
        self.last_frame: float | None = None  # monotonic time of the newest camera frame
        base = f'/carla/{role}'
        # Reliable keep-10 for the camera (2 MB frames): the trainer should see every frame
        # the driver saw. Small messages queue deeper: a trainer busy for a moment must not
        # lose the command of a frame it still has (the frame would go unpaired).
        camera = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)

        def sub(msg_type, topic, callback, qos, callback_group):
            node.create_subscription(msg_type, topic, guard_callback(node, callback), qos,
                                     callback_group=callback_group)

        sub(Image, config.camera_topic.replace('{role}', role), self.on_image, camera,
            callback_group=group)
        sub(Odometry, f'{base}/odometry', self.on_odometry, reliable, callback_group=group)
        sub(PathMsg, f'{base}/waypoints', self.on_route,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL), callback_group=group)
        if config.control_source == 'vehicle_status':
            sub(CarlaEgoVehicleStatus, f'{base}/vehicle_status', self.on_status, reliable,
                callback_group=group)
        else:
            sub(CarlaEgoVehicleControl, f'{base}/vehicle_control_cmd', self.on_command,
                reliable, callback_group=group)
        sub(CarlaCollisionEvent, f'{base}/collision', self.on_collision, reliable,
            callback_group=group)
        sub(CarlaLaneInvasionEvent, f'{base}/lane_invasion', self.on_lane_invasion, reliable,
            callback_group=group)
        sub(Header, f'/av_td3/{role}/episode_start', self.on_episode_start, reliable,
            callback_group=group)
        sub(String, f'/av_td3/{role}/episode_end', self.on_episode_end, reliable,
            callback_group=group)
        self.reset_client = node.create_client(Trigger, f'/av_td3/{role}/reset_episode',
                                               callback_group=group)

    def on_image(self, msg: Image):
        """Preprocess the frame exactly as the driver does (uint8 84x84) and queue it."""
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            frame = to_gray(ImageView.from_msg(msg), self.node.config.spec.preprocessing
                            .image_size)
        except ImageFormatError as error:
            self.node.log_throttled('error', f'bad_frame_{self.role}',
                                    f'{self.role}: bad camera frame dropped: {error}')
            return
        self.frame_stamps.append(stamp)
        del self.frame_stamps[:-32]
        self.last_frame = time.monotonic()
        self.assembler.on_frame(stamp, frame)
        self.store_output()

    def on_odometry(self, msg: Odometry):
        """Feed odometry (pose, speed, yaw rate); an unusable sample is logged and ignored."""
        problem = self.assembler.on_odometry(stamp_to_ns(msg.header.stamp),
                                             pose_from_odometry(msg), speed_from_odometry(msg),
                                             msg.twist.twist.angular.z)
        if problem is not None:
            self.node.log_throttled('warn', f'odometry_{self.role}',
                                    f'{self.role}: odometry ignored: {problem}')

    def on_route(self, msg: PathMsg):
        """Feed a new route; an unusable one counts as no route (frames wait for a good one)."""
        problem = self.assembler.on_route(route_from_path(msg))
        if problem is not None:
            self.node.log_throttled('error', f'route_{self.role}',
                                    f'{self.role}: route of {len(msg.poses)} poses refused '
                                    f'({problem}); no route until a usable one arrives')

    def on_command(self, msg: CarlaEgoVehicleControl):
        """Pair the driver's command with the frame carrying the same stamp."""
        action = control_to_action(command_from_control_msg(msg))
        self._control(stamp_to_ns(msg.header.stamp), action)

    def on_status(self, msg: CarlaEgoVehicleStatus):
        """Pair the applied control with the newest frame older than the status tick."""
        stamp = stamp_to_ns(msg.header.stamp)
        older = [s for s in self.frame_stamps if s < stamp]
        if older:
            self._control(older[-1], control_to_action(command_from_control_msg(msg.control)))

    def _control(self, stamp: int, action):
        problem = self.assembler.on_control(stamp, np.array(action))
        if problem is not None:
            self.node.log_throttled('warn', f'command_{self.role}',
                                    f'{self.role}: command ignored: {problem}')
        self.store_output()

    def on_collision(self, msg: CarlaCollisionEvent):
        """Feed a collision event."""
        self.assembler.on_event(stamp_to_ns(msg.header.stamp), 'collision')

    def on_lane_invasion(self, msg: CarlaLaneInvasionEvent):
        """Feed a lane invasion event."""
        self.assembler.on_event(stamp_to_ns(msg.header.stamp), 'lane_invasion')

    def check_idle(self):
        """Decide steps still waiting for late events once the camera has gone quiet.

        Their window closes with a newer frame; without one (the simulator paused, e.g. after
        a collision) they, and a reset they may ask for, would wait forever.
        """
        quiet = max(1.0, self.node.config.episode.event_window)
        if self.last_frame is not None and time.monotonic() - self.last_frame > quiet:
            self.assembler.decide_pending()
            self.store_output()

    def check_reset(self):
        """Ask again when a requested reset brought no episode_start within reset_timeout."""
        if self.reset_requested is None or not self.assembler.ended:
            return
        waited = time.monotonic() - self.reset_requested
        if waited > self.node.config.reset_timeout:
            self.node.get_logger().warn(f'{self.role}: no episode_start {waited:.1f} s after '
                                        'the reset request; asking again')
            self.request_reset()

    def on_episode_start(self, msg: Header):
        """Begin a new episode at the given stamp."""
        self.resetting = False
        self.reset_requested = None
        self.assembler.on_episode_start(stamp_to_ns(msg.stamp))

    def on_episode_end(self, msg: String):
        """Handle the simulator's 'terminated:<reason>' or 'truncated:<reason>' message."""
        # Only the head (kind and reason) is needed, and reading it cannot fail.
        end = parse_episode_end(msg.data.split(';')[0])
        self.assembler.on_episode_end(end.kind, end.reason)
        self.resetting = True  # the simulator resets by itself
        self.store_output()

    def store_output(self):
        """Write assembled output to the buffer; request a reset after trainer-side ends."""
        for item in self.assembler.pop_output():
            self.node.store(self.role, item)
            if isinstance(item, EpisodeEnd) and item.needs_reset and not self.resetting:
                self.request_reset()

    def request_reset(self):
        """Ask the simulator side to respawn the vehicle (asynchronously)."""
        self.resetting = True
        self.reset_requested = time.monotonic()
        if not self.reset_client.service_is_ready():
            self.node.log_throttled('warn', f'reset_{self.role}',
                                    f'{self.role}: reset service not available; waiting for '
                                    'an episode_start')
            return
        self.reset_client.call_async(Trigger.Request())


class TrainerNode(Node):
    """Learn the driving policy from the ROS graph."""

    def __init__(self):
        """Read parameters, open the buffer and agent (resuming if asked), wire the topics."""
        super().__init__('trainer')
        self.config = config = with_initial_policy_decisions(read_config(self))
        torch.set_num_threads(config.torch_threads)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = config.run_dir / CHECKPOINT_SUBDIR
        self.checkpoint_dir.mkdir(exist_ok=True)
        self.policy_broadcaster = (PolicyBroadcaster(self, config.policy_topic)
                                   if config.policy_topic else None)
        # Opening the buffer takes the run directory's writer lock: from here on no other
        # trainer writes here, so every temp file found is a killed writer's.
        self.buffer = ReplayBuffer.open(
            config.run_dir, config.buffer_capacity,
            vec_dim=config.spec.network.kinematic_dim,
            action_dim=config.spec.network.action_dim,
            vec_dtype=config.buffer_kinematics_dtype,
            stack=config.spec.preprocessing.frame_stack,
            fill_mode=config.spec.preprocessing.stack_fill)
        for stale in remove_stale_run_temps(config.run_dir):
            self.get_logger().warning(f'removed {stale}, left by a writer killed mid-write')
        self.agent = TD3(config.spec.network, config.td3)
        self.buffer_lock = threading.Lock()
        self.unstored = 0  # assembled items the buffer refused (and steps skipped after one)
        self._broken_streams: set = set()
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: list[float] = []
        self._log_times = {}
        self._resume()
        if self.agent.total_updates == 0 and config.initial_policy:
            self._start_from(config.initial_policy)
        self.returns = MonteCarloReturns(config.buffer_capacity + 1, config.td3.gamma)
        self._episode_log = open(config.run_dir / 'episodes.jsonl', 'a', buffering=1)
        self.tb = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(config.run_dir / 'tb'))
        self.rng = np.random.default_rng(config.seed + self.agent.total_updates)
        group = MutuallyExclusiveCallbackGroup()
        self.feeds = [VehicleFeed(self, role, group) for role in config.vehicles]
        self.create_timer(config.log_period, guard_callback(self, self.log_progress),
                          callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0, guard_callback(self, self.check_feeds), callback_group=group)
        self._stop = threading.Event()
        self._updates_since_log = 0
        self._last_log = time.monotonic()
        if latest_policy(self.checkpoint_dir) is None:
            # Drivers leaving their random phase before the first update still get a policy
            # (the initial actor, as TD3 would act at learning_starts) instead of braking.
            self.save_policy()
        self.worker = threading.Thread(target=self.update_loop, name='td3_updates',
                                       daemon=True)
        self.worker.start()
        self.get_logger().info(
            f'training from {", ".join(config.vehicles)} into {config.run_dir} on '
            f'{self.agent.device}: buffer {self.buffer.size}/{self.buffer.capacity}, '
            f'{self.agent.total_updates} updates done, learning starts at '
            f'{config.learning_starts} transitions')

    def check_feeds(self):
        """Once a second: decide steps of quiet cameras, repeat unanswered reset requests."""
        for feed in self.feeds:
            feed.check_idle()
            feed.check_reset()

    # ------------------------------------------------------------------ state
    def _resume(self):
        path = self.config.run_dir / TRAINING_STATE
        if not (self.config.resume and path.exists()):
            return
        tensors, metadata = read_safetensors(path)  # one read: tensors and metadata agree
        td3_metadata = json.loads(metadata['td3'])
        diffs = resume_differences(self.config.spec, metadata, td3_metadata)
        if diffs:
            self.get_logger().fatal(f'cannot resume {path}: it was trained with another '
                                    'policy spec: ' + '; '.join(diffs) + ' (set the same '
                                    'parameters, or use another run_dir)')
            raise SystemExit(2)
        self.agent.load_state_tensors(tensors, td3_metadata)
        counters = json.loads(metadata['counters'])
        # The buffer may hold more than the state recorded (written after the last save).
        self.env_steps = max(int(counters['env_steps']), 0)
        self.episodes = int(counters['episodes'])
        self.get_logger().info(f'resumed {path}: {self.agent.total_updates} updates, '
                               f'{self.env_steps} env steps, buffer {self.buffer.size}')
        newest = latest_policy(self.checkpoint_dir)
        newest_step = int(POLICY_PATTERN.match(newest.name).group(1)) if newest else -1
        if newest_step > self.agent.total_updates:
            self.get_logger().warning(
                f'{newest.name} is newer than the resumed state ({self.agent.total_updates} '
                'updates; the previous run ended between a policy save and a state save): '
                'existing policy files are kept, never rewritten with other weights')

    def _start_from(self, path: str):
        """Start the actor (and its target) from a policy checkpoint with the trainer's spec."""
        policy, _ = load_policy(path, expected=self.config.spec)
        state = {k: v.detach().float() for k, v in policy.state_dict().items()}
        self.agent.load_policy_state(state)
        self.get_logger().info(f'actor starts from {path}')

    def save_training_state(self):
        """Write networks, targets, optimisers and counters atomically; flush the buffer."""
        with self.buffer_lock:
            self.buffer.flush()
            counters = {'env_steps': self.env_steps, 'episodes': self.episodes}
        tensors, metadata = self.agent.state_tensors()
        write_atomic(self.config.run_dir / TRAINING_STATE, tensors,
                     {'td3': json.dumps(metadata), 'counters': json.dumps(counters),
                      'spec': json.dumps(self.config.spec.to_dict())})

    def save_policy(self) -> bool:
        """Write the current policy where drivers look for it and prune old ones.

        A `policy_<step>` that exists is kept (return False): a name always means the same
        weights, for drivers that loaded it and for any reader mid-load.
        """
        step = self.agent.total_updates
        path = policy_path(self.checkpoint_dir, step)
        written = save_policy_state(path, self.agent.policy_state(), self.config.spec,
                                    {'step': str(step)}, replace=False)
        if self.policy_broadcaster is not None:  # drivers with policy_topic (policy_topic.py)
            self.policy_broadcaster.publish_file(path, step)
        if not written:
            self.log_throttled('warn', 'policy_exists', f'{path.name} exists (an earlier run '
                               'reached this step): kept, not rewritten', period=60.0)
        prune_policies(self.checkpoint_dir, self.config.keep_checkpoints)
        return written

    # ------------------------------------------------------------------ experience
    def store(self, role: str, item: AssemblerOutput):
        """Write one assembler output item into the replay buffer and the logs."""
        if isinstance(item, Transition) and role in self._broken_streams:
            self.unstored += 1  # its episode lost a step: no transition may link across
            return
        with self.buffer_lock:
            try:
                if isinstance(item, EpisodeStart):
                    self.buffer.start_episode(item.frame, item.vec, stream=role)
                    self._broken_streams.discard(role)
                    self.returns.start(role)
                elif isinstance(item, Transition):
                    index = self.buffer.add(item.action, item.reward, item.next_frame,
                                            item.next_vec, item.terminated, item.truncated,
                                            stream=role)
                    self.returns.add(index, item.reward, role)
                    self.env_steps += 1
            except ValueError as error:  # e.g. kinematics beyond float16: skip, go on
                self.buffer.abandon_episode(role)
                self._broken_streams.add(role)
                self.returns.start(role)  # the broken episode's returns would be wrong
                self.unstored += 1
                kind = 'start' if isinstance(item, EpisodeStart) else 'transition'
                self.log_throttled('error', f'store_{role}', f'{role}: {kind} not stored '
                                   f'({error}); its episode continues from the next start')
                return
            if (isinstance(item, Transition) and self.tb is not None
                    and self.env_steps % 50 == 0):
                for name, value in item.terms.items():
                    self.tb.add_scalar(f'reward_terms/{name}', value, self.env_steps)
        if isinstance(item, EpisodeEnd):
            with self.buffer_lock:
                self.returns.finish(role)
            self.episodes += 1
            self.recent_returns = (self.recent_returns + [item.episode_return])[-20:]
            record = {'episode': self.episodes, 'vehicle': role,
                      'return': item.episode_return, 'length': item.steps,
                      'reason': item.reason, 'env_steps': self.env_steps,
                      'updates': self.agent.total_updates, 'stamp': time.time()}
            self._episode_log.write(json.dumps(record) + '\n')
            if self.tb is not None:
                self.tb.add_scalar('episode/return', item.episode_return, self.env_steps)
                self.tb.add_scalar('episode/length', item.steps, self.env_steps)
            self.get_logger().info(f'{role}: episode {self.episodes} ended ({item.reason}): '
                                   f'return {item.episode_return:.1f}, {item.steps} steps')

    # ------------------------------------------------------------------ learning
    def update_loop(self):
        """Run TD3 updates whenever the update-to-data ratio allows (worker thread)."""
        config = self.config
        batch_size = config.td3.batch_size
        while not self._stop.is_set():
            allowed = (self.env_steps >= config.learning_starts
                       and self.buffer.size > batch_size
                       and self.agent.total_updates < self.env_steps * config.updates_per_step)
            if not allowed:
                self._stop.wait(0.01)
                continue
            start = time.perf_counter()
            with self.buffer_lock:
                batch = self.buffer.sample(batch_size, self.rng)
                returns = None
                if (config.warmup_targets == 'mc'
                        and self.agent.total_updates < config.td3.critic_warmup_updates):
                    returns = self.returns.lookup(batch.indices)
            # TD3+BC's labels: the route expert's action for each stored kinematic vector.
            labels = (expert_actions(batch.obs_vec, config.spec.features)
                      if config.td3.bc_weight > 0.0 else None)
            sample_ms = (time.perf_counter() - start) * 1e3
            try:
                metrics = self.agent.update(batch, labels, returns)
            except Exception as error:  # keep experience collection alive; say what failed
                self.get_logger().error(f'TD3 update failed: {error!r}')
                self._stop.wait(1.0)
                continue
            self._updates_since_log += 1
            updates = self.agent.total_updates
            if self.tb is not None and updates % 100 == 0:
                for name, value in metrics_to_floats(metrics).items():
                    self.tb.add_scalar(f'train/{name}', value, updates)
                self.tb.add_scalar('train/sample_ms', sample_ms, updates)
            if updates % config.health_every == 0:
                health = self.agent.activation_health(batch)
                if self.tb is not None:
                    for name, value in health.items():
                        self.tb.add_scalar(f'activation_health/{name}', value, updates)
                dead = max(v for k, v in health.items() if 'dead_unit' in k)
                self.get_logger().info(
                    f'activation health at {updates} updates: max dead unit fraction '
                    f'{dead:.3f}, saturated actor outputs '
                    f'{health["actor.saturated_fraction"]:.3f} (mean |pre-tanh| '
                    f'{health["actor.pretanh_abs_mean"]:.2f})')
            if updates % config.checkpoint_every == 0:
                self.save_policy()
                self.get_logger().info(f'checkpoint: policy after {updates} updates')
            if updates % config.state_every == 0:
                self.save_training_state()

    def log_progress(self):
        """Print one progress line (steps, episodes, return, updates/s, drops)."""
        now = time.monotonic()
        rate = self._updates_since_log / max(now - self._last_log, 1e-9)
        self._updates_since_log, self._last_log = 0, now
        stats = [f.assembler.stats for f in self.feeds]
        frames = sum(s.frames for s in stats)
        unpaired = sum(s.dropped_unpaired for s in stats)
        no_odometry = sum(s.dropped_no_odometry for s in stats)
        stale = sum(s.dropped_stale for s in stats)
        missed = sum(s.missed_frames for s in stats)
        gap_collisions = sum(s.gap_collisions for s in stats)
        refused = sum(s.bad_routes + s.bad_odometry + s.bad_commands for s in stats)
        late = sum(s.late_events for s in stats)
        mean_return = (f'{np.mean(self.recent_returns):.1f}' if self.recent_returns else 'n/a')
        self.get_logger().info(
            f'steps {self.env_steps} | episodes {self.episodes} | mean return (last 20) '
            f'{mean_return} | updates {self.agent.total_updates} ({rate:.1f}/s) | buffer '
            f'{self.buffer.size} | frames {frames} (no command {unpaired}, no odometry/route '
            f'{no_odometry}, stale {stale}, missed {missed}) | refused routes/odometry/commands '
            f'{refused} | events beyond the window {late} | collisions between chains '
            f'{gap_collisions} | unstored {self.unstored}')
        if self.tb is not None:
            self.tb.add_scalar('train/updates_per_s', rate, self.agent.total_updates)
            self.tb.flush()

    def log_throttled(self, level: str, key: str, text: str, period: float = 2.0):
        """Log at most once per `period` seconds per key."""
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) >= period:
            self._log_times[key] = now
            getattr(self.get_logger(), level)(text)

    def shutdown(self):
        """Stop updates, store the steps still held back, save the state, close everything."""
        self._stop.set()
        self.worker.join(timeout=30.0)
        for feed in self.feeds:
            for item in feed.assembler.finish():
                self.store(feed.role, item)
        if self.agent.total_updates > 0:
            self.save_policy()
        self.save_training_state()
        with self.buffer_lock:
            self.buffer.close()
        self._episode_log.close()
        if self.tb is not None:
            self.tb.close()


def main(args=None):
    """Run the trainer node until shutdown, then save its state."""
    # Two threads: the progress-log timer (its own callback group) runs beside the feeds.
    run_node(TrainerNode, args, make_executor=lambda: MultiThreadedExecutor(num_threads=2),
             before_destroy=TrainerNode.shutdown)


if __name__ == '__main__':
    main()
