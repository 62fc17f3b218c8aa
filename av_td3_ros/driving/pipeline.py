"""The driver's per-frame pipeline, shared by the driver node and offline bag evaluation.

camera frame -> grey 84x84 -> frame stack -> (+ kinematic vector) -> actor -> control command.
No ROS imports: inputs are ImageView, Pose2D, speed and a route array.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from av_td3_ros.driving.decision import Reason
from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.experts.route_expert import ExpertConfig, expert_action_from_kinematics
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import SAFE_STOP, ControlCommand, action_to_control
from av_td3_ros.policy.features import ROUTE_START_HINT, Pose2D, RouteState, kinematic_vector
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.preprocessing import (
    FrameStack,
    ImageView,
    gray_from_pixels,
    image_pixels,
    scale_frames,
)


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
                 exploration: ExplorationConfig = ExplorationConfig(),
                 expert: ExpertConfig = ExpertConfig()):
        """Prepare buffers for `spec`; `runner` may be None (the car then brakes).

        `expert`: the route expert's settings in expert and dagger modes.
        """
        self.spec = spec
        self.runner = runner
        self.exploration = exploration
        self.expert = expert
        self.stack = FrameStack(spec.preprocessing)
        self.kinematics = np.zeros(spec.features.size, np.float32)
        self._frame = np.empty((spec.preprocessing.image_size,) * 2, np.float32)
        self.steps = 0
        self.exploration_steps = 0
        """Frames of training episodes: the clock of the random phase, noise decay and beta."""
        self.evaluating = False
        """True in evaluation episodes: the policy as is, no noise, no expert takeover."""
        self._route_hint = ROUTE_START_HINT  # route segment of the previous frame
        self._hint_route = None  # the route that hint refers to
        self._rng = np.random.default_rng(exploration.seed)

    def reset_episode(self):
        """Forget the frames and the route position of the previous episode."""
        self.stack.reset()
        self._route_hint = ROUTE_START_HINT

    def warm_up(self) -> bool:
        """Run the policy on the newest observation again and discard the action.

        Nothing that a later `step` reads changes: this only brings the network's weights
        back into the CPU caches before a frame is due (`frame_pacer`). The preprocessing is
        not rerun: the next frame's pixels are new memory anyway, and measured, a rerun did
        not make it faster. Return False when there is nothing to run: no frame yet, no
        policy, or the next frame will not use it (expert mode, random exploration).
        """
        if (self.steps == 0 or self.runner is None or self.mode == 'expert'
                or self.exploring_randomly):
            return False
        self.runner.act(self.stack.frames, self.kinematics)
        return True

    @property
    def mode(self) -> str:
        """Return the mode acting now: eval in evaluation episodes, unless the expert drives."""
        mode = self.exploration.mode
        return 'eval' if self.evaluating and mode != 'expert' else mode

    @property
    def exploring_randomly(self) -> bool:
        """Return True if the next frame gets a uniform random action (no policy needed)."""
        return self.mode == 'explore' and self.exploration.is_random(self.exploration_steps + 1)

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
        mode = self.mode
        if mode != 'eval':
            self.exploration_steps += 1
        if mode == 'expert' or (mode == 'dagger' and self._rng.random()
                                < self.exploration.beta(self.exploration_steps)):
            # The expert reads the full vector (a camera-profile actor masks it itself).
            action = expert_action_from_kinematics(self.kinematics, self.spec.features,
                                                   self.expert)
            return StepResult(action_to_control(*action[:2]), Reason.EXPERT, action,
                              route_state, timings)
        if mode == 'explore' and self.exploration.is_random(self.exploration_steps):
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
            noise = self._rng.normal(0.0, self.exploration.noise_std(self.exploration_steps),
                                     action.shape)
            limit = self.spec.network.max_action
            action = np.clip(action + noise, -limit, limit)
        return StepResult(action_to_control(*action[:2]), Reason.POLICY, action, route_state,
                          timings)
