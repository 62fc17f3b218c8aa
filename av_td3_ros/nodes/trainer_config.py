"""The trainer's parameters (their schema, `TRAINER`) and the config read from them once.

Apart from the node module and free of rclpy, so that train_offline reads the very same
parameters, defaults and ranges from a YAML file without DDS (as bag_eval does with
`driver_config`). The learning part of the config is `learning/learner.LearnerConfig`; the
trainer adds the graph's: vehicles, topics, the reset service, episode rules and reward.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.learning.learner import LearnerConfig
from av_td3_ros.learning.td3 import TD3Config
from av_td3_ros.nodes.schema import (
    EXPERT,
    POLICY_SPEC,
    ROUTE_SPACING,
    Param,
    Schema,
    expert_config,
    policy_spec,
    same_named,
)
from av_td3_ros.policy.checkpoint import CHECKPOINT_DECIDES, PolicySpec, read_metadata
from av_td3_ros.task.reward import RewardConfig
from av_td3_ros.task.transitions import EpisodeConfig


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(LearnerConfig):
    """Everything the trainer node reads from its parameters, once."""

    vehicles: list
    control_source: str
    device: str
    torch_threads: int
    log_period: float
    episode: EpisodeConfig
    reward: RewardConfig
    episode_start_timeout: float
    route_spacing: float = 0.0  # resample routes as the driver does (schema.ROUTE_SPACING)
    camera_topic: str = '/carla/{role}/rgb_front/image'  # {role}: each vehicle's role name
    policy_topic: str = '/av_td3/policy'  # every saved policy is published here ('' = off)


_td3, _episode, _reward, _learner = (partial(Param.of, cls) for cls in (
    TD3Config, EpisodeConfig, RewardConfig, LearnerConfig))


TRAINER = Schema(
    'trainer',
    POLICY_SPEC,
    Param('seed', 0, 'seed of networks, sampling and noise', 0, 2**31 - 1),
    _td3('device', 'auto, cpu or cuda'),
    _td3('gamma', 'discount factor', 0.0, 1.0),
    _td3('tau', 'polyak rate, SB3 meaning', 0.0, 1.0),
    _td3('actor_lr', 'actor Adam learning rate', 0.0, 1.0),
    _td3('critic_lr', 'critic Adam learning rate', 0.0, 1.0),
    _td3('batch_size', 'transitions per update', 1, 65536),
    _td3('policy_frequency', 'policy delay', 1, 1000),
    _td3('policy_noise', 'target smoothing noise std', 0.0, 10.0),
    _td3('noise_clip', 'target smoothing noise clip', 0.0, 10.0),
    _td3('actor_grad_clip', 'actor max grad norm (0: off)', 0.0, 1e6),
    _td3('critic_grad_clip', 'critic max grad norm (0: off)', 0.0, 1e6),
    _td3('actor_pretanh_penalty', 'weight of mean(pre-tanh logits^2) in the actor loss',
         0.0, 1e3),
    _td3('target_encoders', 'target copies of both CNNs'),
    # 'auto', not TD3Config's fp32: the node picks bf16 where the hardware computes it
    # natively; code that builds a TD3Config itself keeps exact fp32.
    Param('precision', 'auto', 'update precision: fp32, bf16, or auto (bf16 where the CPU/GPU '
          'computes it natively)'),
    _td3('critic_warmup_updates', 'critic updates before the first actor update', 0, 10**9),
    _td3('bc_weight', 'TD3+BC: weight of the route expert cloning term in the actor loss '
         '(0: plain TD3)', 0.0, 1e3),
    _td3('bc_alpha', "TD3+BC's alpha: the normalised Q term's weight", 0.0, 1e3),
    _episode('max_episode_steps', 'step limit (truncation)', 1, 10**9, field='max_steps'),
    _episode('max_lateral_deviation', 'terminate beyond this distance from the route (m)',
             0.0, 1e6),
    _episode('goal_tolerance', 'route completed within this distance of its end (m)', 0.0, 1e6),
    _episode('event_window', 'seconds (frame stamps) each step waits for late collision / '
             'lane-invasion events', 0.0, 10.0),
    _reward('efficiency_weight', 'reward weight', -1e3, 1e3),
    _reward('lane_keeping_weight', 'reward weight', -1e3, 1e3),
    _reward('comfort_weight', 'reward weight', -1e3, 1e3),
    _reward('safety_weight', 'reward weight', -1e3, 1e3),
    _reward('progress_weight', 'reward weight', -1e3, 1e3),
    _reward('target_speed', 'efficiency target speed (m/s)', 0.1, 100.0),
    _reward('lane_invasion_penalty', 'per lane invasion', -1e4, 0.0),
    _reward('off_road_penalty', 'beyond max_lateral_deviation', -1e4, 0.0),
    Param('run_dir', 'runs/default', 'replay buffer, checkpoints, logs'),
    Param('vehicles', ['ego_vehicle'], 'role names of the vehicles that feed this trainer'),
    Param('control_source', 'command', 'command (vehicle_control_cmd) or vehicle_status '
          '(vehicle_status.control)'),
    Param('torch_threads', 2, 'torch CPU threads', 1, 256),
    Param('resume', True, 'continue from run_dir/training_state if present'),
    Param('buffer_capacity', 100000, 'replay capacity (transitions)', 16, 10**9),
    Param('buffer_kinematics_dtype', 'float16', 'float16 or float32 kinematics in the buffer'),
    # The driver's random phase (learning_starts) is the trainer's wait: one number.
    Param.of(ExplorationConfig, 'learning_starts', 'transitions before updates', 0, 10**9),
    Param('updates_per_step', 1.0, 'update-to-data ratio', 0.0, 1000.0),
    Param('checkpoint_every', 5000, 'updates between policy checkpoints', 1, 10**9),
    Param('keep_checkpoints', 5, 'policy files kept', 1, 10**6),
    Param('state_every', 5000, 'updates between training-state saves', 1, 10**9),
    Param('log_period', 10.0, 'seconds between progress lines', 0.1, 3600.0),
    Param('health_every', 1000, 'updates between activation-health checks', 1, 10**9),
    Param('tensorboard', True, 'write TensorBoard logs to run_dir/tb'),
    Param('episode_start_timeout', 10.0, 'ask for a reset again when no episode_start came '
          'within this (s)', 0.1, 600.0),
    Param('camera_topic', TrainerConfig.camera_topic, 'camera topic; {role} is replaced by the '
          'role name'),
    Param('policy_topic', TrainerConfig.policy_topic, 'publish each saved policy here for '
          'drivers on other machines; empty: off'),
    _learner('initial_policy', 'policy checkpoint a fresh run starts its actor from (e.g. an '
             'imitation policy); empty: random'),
    _learner('bc_labels', "TD3+BC term's target: expert (the route expert's action) or start "
             "(the starting policy's action: a trust region, no expert)"),
    _learner('bc_pretrain_updates', "BC steps of the actor towards the route expert's action "
             'once learning_starts transitions are stored, before TD3 (0: off)', 0, 10**9),
    ROUTE_SPACING,
    EXPERT,
)
"""Every trainer parameter (docs/training.md, generated; config/trainer.yaml)."""


def config_from_values(v: dict) -> TrainerConfig:
    """Build the TrainerConfig from checked parameter values `v`."""
    spec = policy_spec(v)
    # 0 disables clipping (TD3Config takes None for that).
    td3 = TD3Config(**dict(same_named(TD3Config, v), actor_grad_clip=v['actor_grad_clip'] or None,
                           critic_grad_clip=v['critic_grad_clip'] or None,
                           frame_scale=spec.preprocessing.scale))
    episode = EpisodeConfig(max_steps=v['max_episode_steps'], **same_named(EpisodeConfig, v))
    reward = RewardConfig(**same_named(RewardConfig, v),
                          lateral_tolerance=episode.max_lateral_deviation)
    return TrainerConfig(**dict(same_named(TrainerConfig, v), run_dir=Path(v['run_dir'])),
                         spec=spec, td3=td3, episode=episode, reward=reward,
                         expert=expert_config(v))


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
