"""Drive whole MetaDrive episodes with the privileged expert or a policy and summarise them.

In-process, no ROS: the episodes run on a `MetaDriveClient` (its worker in the MetaDrive
venv). A policy drives through the driver's own `DrivingPipeline` with the front camera
image, the speed and the navigation route, as the driver node would. The return is
MetaDrive's own reward summed over the episode (the worker passes it along); the package's
reward (task/reward.py) is tuned to the stand-in's signals and is not used here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.preprocessing import ImageView
from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveState

OUTCOMES = ('arrived', 'crash', 'out_of_road', 'time_limit', 'simulator_fault')


@dataclass(frozen=True)
class MetaDriveResult:
    """How one MetaDrive evaluation episode went."""

    seed: int
    episode_return: float
    route_completion: float
    """Percent of the route's length up to the point nearest the car's furthest progress."""
    outcome: str
    """One of OUTCOMES, or the client's other end reason (e.g. bad_command)."""
    steps: int

    @property
    def arrived(self) -> bool:
        """Return True when the car reached its destination."""
        return self.outcome == 'arrived'

    def line(self) -> str:
        """Return the one-line report of this episode."""
        return (f'seed {self.seed}: return {self.episode_return:.1f}, route completion '
                f'{self.route_completion:.1f} %, {self.outcome}, {self.steps} steps')


def summary_line(results: list[MetaDriveResult]) -> str:
    """Return 'mean return X ± Y over N episodes; success S of N; route completion C %'."""
    count = len(results)
    if not count:
        return 'mean return nan ± nan over 0 episodes; success 0 of 0; route completion nan %'
    returns = np.array([r.episode_return for r in results], np.float64)
    success = sum(r.arrived for r in results)
    completion = float(np.mean([r.route_completion for r in results]))
    return (f'mean return {returns.mean():.1f} ± {returns.std():.1f} over {count} episodes; '
            f'success {success} of {count}; route completion {completion:.1f} %')


class RouteProgress:
    """Track how far along a route (n, 2+) a car got, as a percent of the route's length."""

    WINDOW = 30
    """Points searched ahead of the last match: a route may pass near itself (loops,
    intersections), and a global nearest point would jump there."""

    def __init__(self, route: np.ndarray):
        """Follow `route`, the lane centres from the episode's first state."""
        self.points = np.asarray(route, float)[:, :2]
        lengths = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.arc = np.concatenate([[0.0], np.cumsum(lengths)])
        self.index = 0

    def update(self, x: float, y: float) -> float:
        """Advance to the route point nearest (x, y) within the window; return the percent."""
        if len(self.points) < 2 or self.arc[-1] <= 0.0:
            return 0.0
        low = max(self.index - 2, 0)
        window = self.points[low:self.index + self.WINDOW]
        nearest = low + int(np.argmin(np.linalg.norm(window - (x, y), axis=1)))
        self.index = max(self.index, nearest)
        return self.percent

    @property
    def percent(self) -> float:
        """Return the completion so far in percent."""
        if len(self.points) < 2 or self.arc[-1] <= 0.0:
            return 0.0
        return float(100.0 * self.arc[self.index] / self.arc[-1])


def image_of(state: MetaDriveState, blank: bool = False) -> ImageView:
    """Wrap the state's BGR camera image as a sensor_msgs/Image would give it; zeros if blank."""
    image = np.zeros_like(state.image) if blank else state.image
    height, width = image.shape[:2]
    return ImageView('bgr8', height, width, width * 3, image)


def policy_driver(pipeline: DrivingPipeline, blank_camera: bool = False):
    """Return `drive(state, route) -> (steer, throttle, brake)` running the driver's pipeline."""

    def drive(state: MetaDriveState, route: np.ndarray):
        if state.steps == 0:
            pipeline.reset_episode()
        command = pipeline.step(image_of(state, blank_camera),
                                Pose2D(state.x, state.y, state.yaw), state.speed,
                                route[:, :2]).command
        return command.steer, command.throttle, command.brake

    return drive


def run_episode(client: MetaDriveClient, seed: int, drive=None) -> MetaDriveResult:
    """Run scenario `seed`; `drive(state, route)` gives commands, None: the expert drives."""
    state = client.reset(seed)
    route = state.route if state.route is not None else np.zeros((0, 3))
    progress = RouteProgress(route)
    total = 0.0
    while not state.done:
        if drive is None:
            state = client.step_expert()
        else:
            state = client.step(*drive(state, route))
        total += float(state.info.get('reward', 0.0))
        progress.update(state.x, state.y)
    outcome = state.end[1]
    # The route's last point lies short of where MetaDrive counts an arrival.
    completion = 100.0 if outcome == 'arrived' else progress.percent
    return MetaDriveResult(seed, total, completion, outcome, state.steps)


def evaluate(client: MetaDriveClient, seeds: list[int], drive=None,
             on_episode=None) -> list[MetaDriveResult]:
    """Run one episode per seed; call `on_episode(result)` after each."""
    results = []
    for seed in seeds:
        results.append(run_episode(client, seed, drive))
        if on_episode is not None:
            on_episode(results[-1])
    return results
