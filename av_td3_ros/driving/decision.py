"""The driver's per-frame decision, shared by the driver node and offline bag evaluation.

Keeps the recent odometry and the route, and turns one camera frame into one command with
the same rules in both places: brake on a malformed frame, on bad or no recent odometry, or
(if required) without a usable route, otherwise run the pipeline. Reads messages by field
name (rclpy or rosbags messages), imports no rclpy. Time is whatever clock the caller passes
(wall time in the node, bag time offline).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .control import SAFE_STOP, ControlCommand
from .features import Pose2D, odometry_problem, route_problem
from .pipeline import DrivingPipeline, StepResult
from .preprocessing import ImageFormatError, ImageView, image_pixels
from .ros_conversions import (
    frame_stack_mono8,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_problem,
    stamp_to_ns,
)


class DriverInputs:
    """Recent odometry and the route, and the decision for each camera frame.

    Routes and odometry are checked on arrival (features.route_problem, odometry_problem,
    ros_conversions.stamp_problem): a bad route counts as no route, a bad odometry sample is
    not used and, until the next good one, every frame brakes with the problem as reason.
    """

    def __init__(self, pipeline: DrivingPipeline, odometry_timeout: float | None,
                 require_route: bool, history: int = 16):
        """Keep `history` odometry samples; `odometry_timeout` None disables the check."""
        self.pipeline = pipeline
        self.odometry_timeout = odometry_timeout
        self.require_route = require_route
        self._odometry = deque(maxlen=history)  # (stamp_ns, Pose2D, speed) of good samples
        self._odometry_time = None
        self.route = None
        self.route_problem: str | None = None
        """Why the newest route message was refused (None: it was usable, or none came)."""
        self.odometry_problem: str | None = None
        """Why the newest odometry message was refused (None when it was usable)."""
        self.bad_routes = 0
        self.bad_odometry = 0
        stack = pipeline.spec.preprocessing
        self.debug_pixels = np.zeros((stack.image_size, stack.image_size * stack.frame_stack),
                                     np.uint8)
        self._debug_scratch = np.zeros((stack.frame_stack, stack.image_size, stack.image_size),
                                       np.float32)

    def on_odometry(self, msg, now: float) -> str | None:
        """Keep a nav_msgs/Odometry received at time `now` (s); return its problem, if any."""
        problem = stamp_problem(msg.header.stamp)
        if problem is None:
            pose, speed = pose_from_odometry(msg), speed_from_odometry(msg)
            problem = odometry_problem(pose.x, pose.y, pose.yaw, speed)
        self.odometry_problem = problem
        if problem is not None:
            self.bad_odometry += 1
            return problem
        self._odometry.append((stamp_to_ns(msg.header.stamp), pose, speed))
        self._odometry_time = now
        return None

    def on_route(self, msg) -> str | None:
        """Use a nav_msgs/Path as the route; return why it is refused (then: no route)."""
        route = route_from_path(msg)
        self.route_problem = route_problem(route)
        if self.route_problem is not None:
            self.bad_routes += 1
            self.route = None
        else:
            self.route = route
        return self.route_problem

    def latest_pose(self) -> Pose2D | None:
        """Return the pose of the newest good odometry, or None."""
        return self._odometry[-1][1] if self._odometry else None

    def odometry_for(self, stamp_ns: int) -> tuple[Pose2D, float] | None:
        """Return (pose, speed) of the newest good odometry not newer than a frame's stamp.

        With the simulator's synchronous ticks that is the odometry of the frame's own tick
        when it has arrived, never a later one; when every stamp is newer (clocks that do not
        match), the newest sample. None without any.
        """
        chosen = None
        for odometry_stamp, pose, speed in self._odometry:
            if odometry_stamp <= stamp_ns:
                chosen = (pose, speed)
        if chosen is None and self._odometry:
            chosen = self._odometry[-1][1:]
        return chosen

    def decide(self, msg, now: float) -> tuple[ControlCommand, str, StepResult | None]:
        """Return (command, reason, pipeline result or None) for one sensor_msgs/Image.

        Checks run in the order a reader needs them: the frame itself, then odometry, then
        the route; the first problem found is the reason for a full brake.
        """
        try:
            problem = stamp_problem(msg.header.stamp)
            if problem is not None:
                raise ImageFormatError(problem)
            image = ImageView.from_msg(msg)
            image_pixels(image)  # validates the layout before anything else is looked at
            if self.odometry_problem is not None:
                return SAFE_STOP, f'bad odometry: {self.odometry_problem}', None
            stale = (self.odometry_timeout is not None and self._odometry_time is not None
                     and now - self._odometry_time > self.odometry_timeout)
            if not self._odometry or stale:
                return SAFE_STOP, 'no recent odometry', None
            if self.require_route and self.route is None:
                return SAFE_STOP, ('no route' if self.route_problem is None
                                   else f'bad route: {self.route_problem}'), None
            pose, speed = self.odometry_for(stamp_to_ns(msg.header.stamp))
            result = self.pipeline.step(image, pose, speed, self.route)
        except ImageFormatError as error:
            return SAFE_STOP, f'bad frame: {error}', None
        return result.command, result.reason, result

    def debug_image(self) -> np.ndarray:
        """Return the current frame stack as the mono8 strip the debug topic carries."""
        return frame_stack_mono8(self.pipeline.stack.frames,
                                 self.pipeline.spec.preprocessing.scale,
                                 out=self.debug_pixels, scratch=self._debug_scratch)
