"""Drive whole MetaDrive episodes with the privileged expert or a policy and summarise them.

In-process, no ROS: the episodes run on a `MetaDriveClient` (its worker in the MetaDrive
venv). A policy drives through the driver's own `DrivingPipeline` with the front camera
image, the speed and the navigation route, as the driver node would. The return is
MetaDrive's own reward summed over the episode (the worker passes it along); the package's
reward (task/reward.py) is tuned to the stand-in's signals and is not used here.
"""
from __future__ import annotations

import numpy as np

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.preprocessing import ImageView
from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveState
from av_td3_ros.sim.metadrive_results import MetaDriveResult, RouteProgress, route_completion


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
    return MetaDriveResult(seed, total, route_completion(outcome, progress), outcome,
                           state.steps)


def evaluate(client: MetaDriveClient, seeds: list[int], drive=None,
             on_episode=None) -> list[MetaDriveResult]:
    """Run one episode per seed; call `on_episode(result)` after each."""
    results = []
    for seed in seeds:
        results.append(run_episode(client, seed, drive))
        if on_episode is not None:
            on_episode(results[-1])
    return results
