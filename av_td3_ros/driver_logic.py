"""The driver's per-frame decision, shared by the driver node and offline bag evaluation.

Keeps the recent odometry and the route, and turns one camera frame into one command with
the same rules in both places: brake without recent odometry or (if required) a route, brake
on a malformed frame, otherwise run the pipeline. Reads messages by field name (rclpy or
rosbags messages), imports no rclpy. Time is whatever clock the caller passes (wall time in
the node, bag time offline).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .control import SAFE_STOP, ControlCommand
from .pipeline import DrivingPipeline, StepResult
from .preprocessing import ImageFormatError, ImageView
from .ros_conversions import (
    frame_stack_mono8,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_to_ns,
)


class DriverInputs:
    """Recent odometry and the route, and the decision for each camera frame."""

    def __init__(self, pipeline: DrivingPipeline, odometry_timeout: float | None,
                 require_route: bool, history: int = 16):
        """Keep `history` odometry messages; `odometry_timeout` None disables the check."""
        self.pipeline = pipeline
        self.odometry_timeout = odometry_timeout
        self.require_route = require_route
        self._odometry = deque(maxlen=history)  # (stamp_ns, msg)
        self._odometry_time = None
        self.route = None
        stack = pipeline.spec.preprocessing
        self.debug_pixels = np.zeros((stack.image_size, stack.image_size * stack.frame_stack),
                                     np.uint8)
        self._debug_scratch = np.zeros((stack.frame_stack, stack.image_size, stack.image_size),
                                       np.float32)

    def on_odometry(self, msg, now: float):
        """Remember an odometry message received at time `now` (seconds)."""
        self._odometry.append((stamp_to_ns(msg.header.stamp), msg))
        self._odometry_time = now

    def on_route(self, msg):
        """Use a nav_msgs/Path as the route (fewer than 2 points: no route)."""
        route = route_from_path(msg)
        self.route = route if len(route) >= 2 else None

    def latest_odometry(self):
        """Return the newest odometry message, or None."""
        return self._odometry[-1][1] if self._odometry else None

    def odometry_for(self, stamp_ns: int):
        """Return the newest odometry not newer than a frame's stamp.

        With the simulator's synchronous ticks that is the odometry of the frame's own tick
        when it has arrived, never a later one; when every stamp is newer (clocks that do not
        match), the newest message.
        """
        chosen = None
        for odometry_stamp, msg in self._odometry:
            if odometry_stamp <= stamp_ns:
                chosen = msg
        return chosen if chosen is not None else self.latest_odometry()

    def decide(self, msg, now: float) -> tuple[ControlCommand, str, StepResult | None]:
        """Return (command, reason, pipeline result or None) for one sensor_msgs/Image."""
        try:
            image = ImageView.from_msg(msg)
            stale = (self.odometry_timeout is not None and self._odometry_time is not None
                     and now - self._odometry_time > self.odometry_timeout)
            if not self._odometry or stale:
                return SAFE_STOP, 'no recent odometry', None
            if self.require_route and self.route is None:
                return SAFE_STOP, 'no route', None
            odometry = self.odometry_for(stamp_to_ns(msg.header.stamp))
            result = self.pipeline.step(image, pose_from_odometry(odometry),
                                        speed_from_odometry(odometry), self.route)
        except ImageFormatError as error:
            return SAFE_STOP, f'bad frame: {error}', None
        return result.command, result.reason, result

    def debug_image(self) -> np.ndarray:
        """Return the current frame stack as the mono8 strip the debug topic carries."""
        return frame_stack_mono8(self.pipeline.stack.frames,
                                 self.pipeline.spec.preprocessing.scale,
                                 out=self.debug_pixels, scratch=self._debug_scratch)
