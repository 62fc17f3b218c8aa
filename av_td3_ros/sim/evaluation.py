"""Drive whole stand-in episodes with a policy or the expert and summarise the returns (no ROS).

Episodes run in-process on `SimEnv` through the driver's own `DrivingPipeline` (the same
preprocessing, frame stack, kinematic vector and action mapping as the driver node), with
the simulator settings the sim_bridge node uses by default, so an in-process return is the
return the ROS loop would report for the same seed (up to frames the ROS loop drops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.route_expert import RouteExpert
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import action_to_control
from av_td3_ros.policy.features import Pose2D, resample_route
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.policy.preprocessing import ImageView
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig, SimState


@dataclass(frozen=True)
class EpisodeResult:
    """How one evaluation episode went."""

    seed: int
    episode_return: float
    steps: int
    reason: str
    off_track_steps: int
    """Steps with all wheels off the road; -1 where not measured."""

    @property
    def lap_complete(self) -> bool:
        """Return True when the car completed its lap."""
        return self.reason == 'lap_complete'

    def line(self) -> str:
        """Return the one-line report of this episode."""
        text = (f'seed {self.seed}: return {self.episode_return:.1f}, {self.steps} steps, '
                f'{self.reason} (lap {"completed" if self.lap_complete else "not completed"})')
        if self.off_track_steps >= 0:  # -1: not measured (through ROS)
            text += f', {self.off_track_steps} steps off the road'
        return text


def parse_seeds(text: str) -> list[int]:
    """Parse '5-9', '1,4,7' or a mix ('0-2,10') into a list of seeds."""
    seeds = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        if '-' in part[1:]:
            low, high = part.split('-', 1) if not part.startswith('-') else (part, part)
            low_i, high_i = int(low), int(high)
            if high_i < low_i:
                raise ValueError(f'empty seed range {part!r}')
            seeds.extend(range(low_i, high_i + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f'no seeds in {text!r}')
    return seeds


def summary_line(results: list[EpisodeResult]) -> str:
    """Return 'mean return X ± Y over N episodes' (population std)."""
    returns = np.array([r.episode_return for r in results], np.float64)
    if not len(returns):
        return 'mean return nan ± nan over 0 episodes'
    return f'mean return {returns.mean():.1f} ± {returns.std():.1f} over {len(returns)} episodes'


def image_of(state: SimState) -> ImageView:
    """Wrap a SimState's BGRA frame as the ImageView a sensor_msgs/Image would give."""
    height, width = state.frame.shape[:2]
    return ImageView('bgra8', height, width, width * 4, state.frame)


def pose_of(state: SimState) -> Pose2D:
    """Return the planar pose of a SimState."""
    return Pose2D(state.x, state.y, state.yaw)


class AblatedPolicy(nn.Module):
    """An ActorPolicy with one input replaced by a constant (its mean over data).

    `camera`: the CNN features are replaced by `constant` (features_dim,); `kinematics`: the
    kinematic vector is replaced by `constant` (kinematic_dim,). What is left shows which input
    the policy relies on.
    """

    def __init__(self, policy: ActorPolicy, ablate: str, constant: torch.Tensor):
        """Wrap `policy`; `ablate` is 'camera' or 'kinematics'."""
        super().__init__()
        if ablate not in ('camera', 'kinematics'):
            raise ValueError(f"ablate must be 'camera' or 'kinematics', got {ablate!r}")
        self.config = policy.config
        self.policy = policy
        self.ablate = ablate
        self.register_buffer('constant', constant.detach().clone().float())

    def forward(self, frames: torch.Tensor, kinematics: torch.Tensor) -> torch.Tensor:
        """Return actions with the ablated input held at its constant."""
        batch = frames.shape[0]
        if self.ablate == 'camera':
            features = self.constant.expand(batch, -1)
        else:
            features = self.policy.cnn(frames)
            kinematics = self.constant.expand(batch, -1)
        return self.policy.actor(torch.cat([features, kinematics], dim=1))


def input_means(policy: ActorPolicy, frames: torch.Tensor,
                kinematics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean CNN features, mean kinematic vector) of `policy` over a batch of states."""
    with torch.inference_mode():
        features = policy.cnn(frames).mean(dim=0)
    return features, kinematics.float().mean(dim=0)


def reference_states(spec: PolicySpec, seed: int, steps: int = 300,
                     env_config: SimEnvConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Drive the expert for `steps` on track `seed` and return the stacked frames and vectors.

    These are "data" for ablations: the states a driving car sees.
    """
    env = SimEnv(env_config or SimEnvConfig())
    pipeline = DrivingPipeline(spec, None)
    expert = RouteExpert(spec.features)
    frames, vectors = [], []
    try:
        state = env.reset(seed=seed)
        while not state.done and len(frames) < steps:
            pipeline.step(image_of(state), pose_of(state), state.speed, env.waypoints)
            frames.append(pipeline.stack.frames.copy())
            vectors.append(pipeline.kinematics.copy())
            action = expert.act(pose_of(state), state.speed, env.waypoints)
            command = action_to_control(*action)
            state = env.step(command.steer, command.throttle, command.brake)
    finally:
        env.close()
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(vectors))


def run_episode(env: SimEnv, seed: int, drive) -> EpisodeResult:
    """Run one episode on track `seed`; `drive(state) -> (steer, throttle, brake)`."""
    state = env.reset(seed=seed)
    off_track = 0
    while not state.done:
        steer, throttle, brake = drive(state)
        state = env.step(steer, throttle, brake)
        off_track += state.off_track
    return EpisodeResult(seed, float(state.episode_return), state.steps, state.reason,
                         off_track)


class DriverRoute:
    """The route as a driver holds it: the simulator's, resampled once per episode if asked.

    `route_spacing` plays the driver's parameter of that name (0: as received).
    """

    def __init__(self, env: SimEnv, route_spacing: float = 0.0):
        """Follow `env`'s route."""
        self.env, self.route_spacing, self.route = env, route_spacing, None

    def at(self, state: SimState) -> np.ndarray:
        """Return the route for `state`, received anew at each episode's first step."""
        if state.steps == 0 or self.route is None:
            self.route = (resample_route(self.env.waypoints, self.route_spacing)
                          if self.route_spacing > 0.0 else self.env.waypoints)
        return self.route


def policy_driver(env: SimEnv, pipeline: DrivingPipeline, route_spacing: float = 0.0):
    """Return a `drive(state)` callable that runs `pipeline` as the driver node would."""
    route = DriverRoute(env, route_spacing)

    def drive(state: SimState):
        if state.steps == 0:
            pipeline.reset_episode()
        command = pipeline.step(image_of(state), pose_of(state), state.speed,
                                route.at(state)).command
        return command.steer, command.throttle, command.brake

    return drive


def expert_driver(env: SimEnv, expert: RouteExpert, route_spacing: float = 0.0):
    """Return a `drive(state)` callable for the route expert."""
    route = DriverRoute(env, route_spacing)

    def drive(state: SimState):
        if state.steps == 0:
            expert.reset()
        action = expert.act(pose_of(state), state.speed, route.at(state))
        command = action_to_control(*action)
        return command.steer, command.throttle, command.brake

    return drive


def run_episodes(env: SimEnv, seeds: list[int], drive, on_episode=None
                 ) -> list[EpisodeResult]:
    """Run one episode per seed with `drive`, call `on_episode(result)` after each; close env."""
    results = []
    try:
        for seed in seeds:
            results.append(run_episode(env, seed, drive))
            if on_episode is not None:
                on_episode(results[-1])
    finally:
        env.close()
    return results


def evaluate_policy(policy: nn.Module, spec: PolicySpec, seeds: list[int],
                    env_config: SimEnvConfig | None = None, on_episode=None,
                    route_spacing: float = 0.0) -> list[EpisodeResult]:
    """Drive one episode per seed with `policy` (an ActorPolicy or AblatedPolicy) on CPU.

    `route_spacing`: the driver's (the simulator's is `env_config.route_spacing`).
    """
    env = SimEnv(env_config or SimEnvConfig())
    pipeline = DrivingPipeline(spec, PolicyRunner(policy, torch.device('cpu')))
    return run_episodes(env, seeds, policy_driver(env, pipeline, route_spacing), on_episode)


def evaluate_expert(seeds: list[int], spec: PolicySpec | None = None,
                    env_config: SimEnvConfig | None = None, on_episode=None,
                    route_spacing: float = 0.0) -> list[EpisodeResult]:
    """Drive one episode per seed with the route expert (no camera render needed)."""
    env = SimEnv(env_config or SimEnvConfig(render_camera=False))
    drive = expert_driver(env, RouteExpert((spec or PolicySpec()).features), route_spacing)
    return run_episodes(env, seeds, drive, on_episode)


def mean_return(results: list[EpisodeResult]) -> float:
    """Return the mean episode return (nan for none)."""
    return float(np.mean([r.episode_return for r in results])) if results else math.nan
