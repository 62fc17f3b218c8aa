"""SimEnv as a gymnasium Env, for learners from other libraries (e.g. Stable-Baselines3).

Observation: what the package's driver builds from the same simulator step, as a dict:
`frames`, the last `frame_stack` 84x84 grey frames as uint8 (oldest first; other libraries
scale images themselves, the driver's `scale_frames` is an affine map of these), and
`kinematics`, the 53-value kinematic vector with the entries the actor ignores under
`kinematic_inputs` zeroed (the camera profile keeps the speed only). Action: (steer, accel)
in [-1, 1]^2, mapped to a command as the driver maps it. Reward and episode ends: the
trainer's shaped reward (`SimEnv.reward_config`) and its episode rules (the lateral limit,
the route's end, the simulator's lap and step limit), computed per step from the same
route geometry the `TransitionAssembler` uses; `info['sim_return']` is the simulator's own
return, the figure `evaluate_policy` reports. No timing jitter is modelled: every step has
its frame, pose and action.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from av_td3_ros.policy.control import action_to_control
from av_td3_ros.policy.features import ROUTE_START_HINT, FeatureConfig, kinematic_vector
from av_td3_ros.policy.preprocessing import PreprocessConfig, gray_from_pixels, image_pixels
from av_td3_ros.sim.evaluation import image_of, pose_of
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig, SimState
from av_td3_ros.task.reward import RewardFunction, StepEvents, VehicleState
from av_td3_ros.task.transitions import EpisodeConfig

TRAINING_EPISODE = EpisodeConfig(max_steps=1200, max_lateral_deviation=6.5)
"""The trainer's episode rules for the stand-in (as `FinetuneConfig.episode`)."""


class SimGymEnv(gym.Env):
    """One stand-in vehicle behind the gymnasium API; one track per episode."""

    metadata = {'render_modes': []}

    def __init__(self, features: FeatureConfig = FeatureConfig(),
                 preprocessing: PreprocessConfig = PreprocessConfig(),
                 kinematic_inputs: str = 'all',
                 episode: EpisodeConfig | None = TRAINING_EPISODE,
                 sim: SimEnvConfig | None = None, track_start: int = 5000):
        """Open the simulator.

        `episode` None ends episodes only where the simulator does (lap or step limit), as
        `evaluate_policy` drives. Episodes reset without a seed take tracks `track_start`,
        +1, ...
        """
        if kinematic_inputs not in ('all', 'speed'):
            raise ValueError(f"kinematic_inputs must be 'all' or 'speed', got "
                             f'{kinematic_inputs!r}')
        self.features = features
        self.preprocessing = preprocessing
        self.kinematic_inputs = kinematic_inputs
        self.episode = episode
        self.env = SimEnv(sim or SimEnvConfig())
        self.reward_function = RewardFunction(SimEnv.reward_config)
        self._next_track = track_start
        size, stack = preprocessing.image_size, preprocessing.frame_stack
        self.observation_space = gym.spaces.Dict({
            'frames': gym.spaces.Box(0, 255, (stack, size, size), np.uint8),
            'kinematics': gym.spaces.Box(-np.inf, np.inf, (features.size,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._frames = np.zeros((stack, size, size), np.uint8)
        self._vehicle: VehicleState | None = None
        self._hint = ROUTE_START_HINT  # segment the next route search starts from
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode on track `seed` (None: the next unused track)."""
        super().reset(seed=seed)
        if seed is None:
            seed, self._next_track = self._next_track, self._next_track + 1
        state = self.env.reset(seed=seed)
        self.reward_function.reset()
        self._frames.fill(0)
        self._hint = ROUTE_START_HINT
        self._steps = 0
        observation, self._vehicle = self._observe(state, first=True)
        return observation, {'track': seed}

    def step(self, action):
        """Apply (steer, accel); return the observation, shaped reward and episode flags."""
        command = action_to_control(*np.asarray(action, np.float64)[:2])
        state = self.env.step(command.steer, command.throttle, command.brake)
        self._steps += 1
        observation, vehicle = self._observe(state, first=False)
        terminated, truncated, reason = state.terminated, state.truncated, state.reason
        if self.episode is not None and not (terminated or truncated):
            end = self.episode.route_end(vehicle)
            if end is not None:
                terminated, truncated, reason = end
            elif self._steps >= self.episode.max_steps:
                truncated, reason = True, 'step limit'
        events = StepEvents(goal_reached=reason == 'route completed')
        reward, _ = self.reward_function(self._vehicle, vehicle, events)
        self._vehicle = vehicle
        info = {'sim_return': float(state.episode_return), 'reason': reason}
        return observation, float(reward), bool(terminated), bool(truncated), info

    def close(self):
        """Close the simulator."""
        self.env.close()

    def _observe(self, state: SimState, first: bool):
        image = image_of(state)
        gray = gray_from_pixels(image_pixels(image), image.encoding,
                                self.preprocessing.image_size)
        if first and self.preprocessing.stack_fill == 'repeat_first':
            self._frames[:] = gray
        else:
            self._frames[:-1] = self._frames[1:]
            self._frames[-1] = gray
        vec, route = kinematic_vector(pose_of(state), state.speed, self.env.waypoints,
                                      self.features, hint=self._hint)
        self._hint = route.segment
        vehicle = VehicleState(time=self._steps * self.env.config.step_seconds,
                               speed=state.speed, yaw_rate=state.yaw_rate,
                               lateral_deviation=route.lateral_deviation,
                               heading_error=route.heading_error,
                               distance_to_goal=route.distance_to_goal,
                               segment=route.segment)
        if self.kinematic_inputs == 'speed':
            vec[1:] = 0.0  # the camera profile's actor sees only the speed
        return {'frames': self._frames.copy(), 'kinematics': vec}, vehicle
