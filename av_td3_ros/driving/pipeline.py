"""The driver's per-frame pipeline, shared by the driver node and offline bag evaluation.

camera frame -> grey 84x84 -> frame stack -> (+ kinematic vector) -> actor -> control command.
No ROS imports: inputs are ImageView, Pose2D, speed and a route array.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..learning.checkpoint import PolicySpec
from ..sim.expert import expert_action_from_kinematics
from .control import SAFE_STOP, ControlCommand, action_to_control
from .decision import Reason
from .features import ROUTE_START_HINT, Pose2D, RouteState, kinematic_vector
from .inference import PolicyRunner
from .preprocessing import FrameStack, ImageView, gray_from_pixels, image_pixels, scale_frames

MODES = ('eval', 'explore', 'expert', 'dagger')


class AR1Noise:
    """Temporally correlated Gaussian noise: n_t = c n_(t-1) + sqrt(1 - c^2) sigma e_t.

    Its stationary std is sigma whatever c. With c = 0 it is white noise, the very same
    draws as `rng.normal(0, sigma)`; with c near 1 a deviation lasts about 1 / (1 - c)
    steps, so it moves the car as a change of policy would, where white noise at 20 Hz
    averages out within a few frames.
    """

    def __init__(self, rng: np.random.Generator, sigma: float, correlation: float, dim: int = 2):
        """Start at zero; `rng` draws the innovations."""
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f'correlation must be in [0, 1), got {correlation}')
        self.rng = rng
        self.sigma = sigma
        self.correlation = correlation
        self.value = np.zeros(dim)

    def reset(self):
        """Start again from zero (a new episode)."""
        self.value = np.zeros_like(self.value)

    def __call__(self, sigma: float | None = None) -> np.ndarray:
        """Return the next sample (with `sigma`, the innovation's std from now on)."""
        if sigma is not None:
            self.sigma = sigma
        innovation = self.rng.normal(0.0, self.sigma, self.value.shape)
        self.value = (self.correlation * self.value
                      + np.sqrt(1.0 - self.correlation ** 2) * innovation)
        return self.value


@dataclass(frozen=True)
class ExplorationConfig:
    """How a driver in explore mode perturbs the policy's actions."""

    mode: str = 'eval'
    """eval: the policy's action as is; explore: uniform random, then Gaussian noise;
    expert: the route expert drives (no policy needed); dagger: per frame the expert with
    probability beta (see beta_*), else the policy."""
    random_steps: int = 10000
    """Explore mode: uniform random actions for the first random_steps frames (TD3
    learning_starts: with both equal, the first update comes after the last random frame)."""
    noise_start: float = 0.3
    """Gaussian action noise std at the end of the random phase."""
    noise_end: float = 0.1
    """Noise std after the decay."""
    noise_decay_steps: int = 20000
    """Steps over which the std decays linearly from noise_start to noise_end."""
    noise_correlation: float = 0.0
    """AR(1) coefficient of the noise from one frame to the next, in [0, 1) (`AR1Noise`;
    its std stays the scheduled one). 0: independent Gaussian noise per frame."""
    seed: int = 0
    """Seed of the exploration noise."""
    beta_start: float = 1.0
    """DAgger: probability that the expert drives a frame, at the first frame..."""
    beta_end: float = 0.0
    """...and after beta_decay_steps frames (linear in between)."""
    beta_decay_steps: int = 20000
    """DAgger: frames over which beta decays."""

    def beta(self, step: int) -> float:
        """Return the DAgger probability that the expert drives frame `step` (1-based)."""
        if self.beta_decay_steps == 0:
            return self.beta_end
        progress = min(max(step - 1, 0) / self.beta_decay_steps, 1.0)
        return self.beta_start + (self.beta_end - self.beta_start) * progress

    def __post_init__(self):
        """Validate the mode and the schedule."""
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.random_steps < 0 or self.noise_decay_steps < 0:
            raise ValueError('random_steps and noise_decay_steps must be >= 0')
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ValueError(f'noise_correlation must be in [0, 1), '
                             f'got {self.noise_correlation}')
        if not (0.0 <= self.beta_start <= 1.0 and 0.0 <= self.beta_end <= 1.0) \
                or self.beta_decay_steps < 0:
            raise ValueError('beta_start and beta_end must be in [0, 1], '
                             'beta_decay_steps >= 0')

    def is_random(self, step: int) -> bool:
        """Return True if frame `step` (1-based: the first frame is 1) gets a random action.

        The one place of the random phase's boundary: frames 1..random_steps are random.
        """
        return self.mode == 'explore' and step <= self.random_steps

    def noise_std(self, step: int) -> float:
        """Return the Gaussian noise std at driver step `step` (after the random phase)."""
        if self.noise_decay_steps == 0:
            return self.noise_end
        progress = min(max(step - self.random_steps, 0) / self.noise_decay_steps, 1.0)
        return self.noise_start + (self.noise_end - self.noise_start) * progress


@dataclass
class StepResult:
    """What the pipeline decided for one camera frame."""

    command: ControlCommand
    reason: Reason
    """POLICY, RANDOM, EXPERT, or why the car is stopped (NO_POLICY, NON_FINITE_ACTION)."""
    action: np.ndarray | None = None
    route: RouteState | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class DrivingPipeline:
    """Stateful per-vehicle pipeline: frame stack, features, policy and exploration."""

    def __init__(self, spec: PolicySpec, runner: PolicyRunner | None = None,
                 exploration: ExplorationConfig = ExplorationConfig()):
        """Prepare buffers for `spec`; `runner` may be None (the car then brakes)."""
        self.spec = spec
        self.runner = runner
        self.exploration = exploration
        self.stack = FrameStack(spec.preprocessing)
        self.kinematics = np.zeros(spec.features.size, np.float32)
        self._frame = np.empty((spec.preprocessing.image_size,) * 2, np.float32)
        self.steps = 0
        self._route_hint = ROUTE_START_HINT  # route segment of the previous frame
        self._hint_route = None  # the route that hint refers to
        self._rng = np.random.default_rng(exploration.seed)
        self._noise = AR1Noise(self._rng, exploration.noise_end, exploration.noise_correlation,
                               spec.network.action_dim)

    def reset_episode(self):
        """Forget the frames and the route position of the previous episode."""
        self.stack.reset()
        self._route_hint = ROUTE_START_HINT
        self._noise.reset()

    def warm_up(self) -> bool:
        """Run the policy on the newest observation again and discard the action.

        Nothing that a later `step` reads changes: this only brings the network's weights
        back into the CPU caches before a frame is due (`frame_pacer`). The preprocessing is
        not rerun: the next frame's pixels are new memory anyway, and measured, a rerun did
        not make it faster. Return False when there is nothing to run: no frame yet, no
        policy, or the next frame will not use it (expert mode, random exploration).
        """
        if (self.steps == 0 or self.runner is None or self.exploration.mode == 'expert'
                or self.exploring_randomly):
            return False
        self.runner.act(self.stack.frames, self.kinematics)
        return True

    @property
    def exploring_randomly(self) -> bool:
        """Return True if the next frame gets a uniform random action (no policy needed)."""
        return self.exploration.is_random(self.steps + 1)

    def set_runner(self, runner: PolicyRunner | None):
        """Swap the policy (between frames: the caller serialises calls)."""
        self.runner = runner

    def step(self, image: ImageView, pose: Pose2D, speed: float,
             route: np.ndarray | None) -> StepResult:
        """Process one camera frame; raise ImageFormatError (stack untouched) if it is bad."""
        timings = {}
        start = time.perf_counter()
        pixels = image_pixels(image)
        timings['conversion'] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        gray = gray_from_pixels(pixels, image.encoding, self.spec.preprocessing.image_size)
        scale_frames(gray, self.spec.preprocessing.scale, out=self._frame)
        frames = self.stack.push(self._frame)
        timings['preprocess'] = (time.perf_counter() - start) * 1e3

        start = time.perf_counter()
        if route is not self._hint_route:
            self._route_hint, self._hint_route = ROUTE_START_HINT, route
        _, route_state = kinematic_vector(pose, speed, route, self.spec.features,
                                          out=self.kinematics, hint=self._route_hint)
        self._route_hint = route_state.segment if route_state is not None else None
        timings['features'] = (time.perf_counter() - start) * 1e3
        self.steps += 1

        mode = self.exploration.mode
        if mode == 'expert' or (mode == 'dagger'
                                and self._rng.random() < self.exploration.beta(self.steps)):
            # The expert reads the full vector (a camera-profile actor masks it itself).
            action = expert_action_from_kinematics(self.kinematics, self.spec.features)
            return StepResult(action_to_control(*action[:2]), Reason.EXPERT, action,
                              route_state, timings)
        if self.exploration.is_random(self.steps):
            action = self._rng.uniform(-1.0, 1.0, self.spec.network.action_dim)
            return StepResult(action_to_control(*action[:2]), Reason.RANDOM, action,
                              route_state, timings)
        if self.runner is None:
            return StepResult(SAFE_STOP, Reason.NO_POLICY, None, route_state, timings)
        start = time.perf_counter()
        action = self.runner.act(frames, self.kinematics)
        timings['inference'] = (time.perf_counter() - start) * 1e3
        if not np.isfinite(action).all():
            return StepResult(SAFE_STOP, Reason.NON_FINITE_ACTION, action, route_state,
                              timings)
        if mode == 'explore':
            noise = self._noise(self.exploration.noise_std(self.steps)).reshape(action.shape)
            limit = self.spec.network.max_action
            action = np.clip(action + noise, -limit, limit)
        return StepResult(action_to_control(*action[:2]), Reason.POLICY, action, route_state,
                          timings)
