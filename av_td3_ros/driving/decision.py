"""The driver's one brake-or-drive decision, shared by the driver node and bag_eval.

Keeps the recent odometry and the route, and turns one camera frame into one `Decision`: a
command and a typed `Reason`. The same rules hold in both places: brake on a malformed
frame, on bad or no recent odometry, or (if required) without a usable route, otherwise run
the pipeline, which says which actor drove (or why none could). A reason's `Severity`
decides how a brake is logged, so no caller reads reason texts. Reads messages by field name
(rclpy or rosbags messages), imports no rclpy. Time is whatever clock the caller passes
(wall time in the node, bag time offline).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from av_td3_ros.driving.ros_conversions import (
    frame_stack_mono8,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_problem,
    stamp_to_ns,
)
from av_td3_ros.policy.control import SAFE_STOP, ControlCommand
from av_td3_ros.policy.features import Pose2D, odometry_problem, resample_route, route_problem
from av_td3_ros.policy.preprocessing import ImageFormatError, ImageView, image_pixels

if TYPE_CHECKING:  # the pipeline imports Reason from here; this module only names its types
    from av_td3_ros.driving.pipeline import DrivingPipeline, StepResult


class Severity(Enum):
    """How a frame's reason is reported; a brake's value names its log level."""

    DRIVING = 'driving'
    """The command is an actor's: nothing to log, diagnostics say OK."""
    WARN = 'warn'
    """A brake logged as a warning (throttled, one throttle per reason)."""
    ERROR = 'error'
    """A brake logged as an error: the input itself is broken."""


class Reason(Enum):
    """Why a frame's command is what it is: the actor that drove, or why the car brakes.

    `text` is what logs, /diagnostics (`last_reason`) and bag_eval's summary say; a reason
    with details (a bad frame, odometry or route) says them after a colon.
    """

    POLICY = 'policy', Severity.DRIVING
    RANDOM = 'random', Severity.DRIVING
    """Explore mode's uniform random phase (ExplorationConfig.is_random)."""
    EXPERT = 'expert', Severity.DRIVING
    NO_POLICY = 'no policy', Severity.WARN
    NON_FINITE_ACTION = 'non-finite action', Severity.WARN
    BAD_FRAME = 'bad frame', Severity.ERROR
    BAD_ODOMETRY = 'bad odometry', Severity.WARN
    NO_RECENT_ODOMETRY = 'no recent odometry', Severity.WARN
    NO_ROUTE = 'no route', Severity.WARN
    BAD_ROUTE = 'bad route', Severity.WARN
    # Decided by the driver node itself, not for a frame; it logs these where they happen.
    WAITING_FOR_CAMERA = 'waiting for camera', Severity.WARN
    CAMERA_STALLED = 'camera stalled', Severity.ERROR
    INTERNAL_ERROR = 'internal error (see log)', Severity.ERROR

    def __init__(self, text: str, severity: Severity):
        """Keep the text and the severity (the member's value is the pair)."""
        self.text = text
        self.severity = severity

    @property
    def drives(self) -> bool:
        """Return True if the command is an actor's rather than a safety brake."""
        return self.severity is Severity.DRIVING


@dataclass(frozen=True)
class Decision:
    """The command for one camera frame and why."""

    command: ControlCommand
    reason: Reason
    detail: str = ''
    """What exactly was wrong (bad frame, odometry or route); empty otherwise."""
    step: StepResult | None = None
    """The pipeline's result (action, route state, timings); None when it did not run."""

    @classmethod
    def brake(cls, reason: Reason, detail: str = '') -> Decision:
        """Return the full brake for `reason`."""
        return cls(SAFE_STOP, reason, detail)

    @property
    def text(self) -> str:
        """Return the reason as logs and /diagnostics say it ('bad route: <why>')."""
        return f'{self.reason.text}: {self.detail}' if self.detail else self.reason.text

    @property
    def log_message(self) -> str:
        """Return the line a brake is logged with (at its reason's severity)."""
        if self.reason is Reason.BAD_FRAME:
            return f'bad camera frame, braking: {self.detail}'
        return f'braking: {self.text}'


class DriverInputs:
    """Recent odometry and the route, and the decision for each camera frame.

    Routes and odometry are checked on arrival (features.route_problem, odometry_problem,
    ros_conversions.stamp_problem): a bad route counts as no route, a bad odometry sample is
    not used and, until the next good one, every frame brakes with the problem as reason.
    """

    def __init__(self, pipeline: DrivingPipeline, odometry_timeout: float | None,
                 require_route: bool, history: int = 16, route_spacing: float = 0.0):
        """Keep `history` odometry samples; `odometry_timeout` None disables the check.

        `route_spacing` > 0: each route is resampled every that many metres of arc length on
        arrival (`features.resample_route`), so the kinematic vector's waypoints cover the
        same road whatever the planner's spacing; 0 uses it as received.
        """
        self.pipeline = pipeline
        self.odometry_timeout = odometry_timeout
        self.require_route = require_route
        self.route_spacing = route_spacing
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
        if self.route_problem is None and self.route_spacing > 0.0:
            try:
                route = resample_route(route, self.route_spacing)
            except ValueError as error:
                self.route_problem = str(error)
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

    def decide(self, msg, now: float) -> Decision:
        """Return the decision for one sensor_msgs/Image.

        Checks run in the order a reader needs them: the frame itself, then odometry, then
        the route; the first problem found is the reason for a full brake. Otherwise the
        pipeline's reason stands (an actor drove, or there was no policy or a non-finite
        action).
        """
        try:
            problem = stamp_problem(msg.header.stamp)
            if problem is not None:
                raise ImageFormatError(problem)
            image = ImageView.from_msg(msg)
            image_pixels(image)  # validates the layout before anything else is looked at
            if self.odometry_problem is not None:
                return Decision.brake(Reason.BAD_ODOMETRY, self.odometry_problem)
            stale = (self.odometry_timeout is not None and self._odometry_time is not None
                     and now - self._odometry_time > self.odometry_timeout)
            if not self._odometry or stale:
                return Decision.brake(Reason.NO_RECENT_ODOMETRY)
            if self.require_route and self.route is None:
                return (Decision.brake(Reason.NO_ROUTE) if self.route_problem is None
                        else Decision.brake(Reason.BAD_ROUTE, self.route_problem))
            pose, speed = self.odometry_for(stamp_to_ns(msg.header.stamp))
            result = self.pipeline.step(image, pose, speed, self.route)
        except ImageFormatError as error:
            return Decision.brake(Reason.BAD_FRAME, str(error))
        return Decision(result.command, result.reason, step=result)

    def debug_image(self) -> np.ndarray:
        """Return the current frame stack as the mono8 strip the debug topic carries."""
        return frame_stack_mono8(self.pipeline.stack.frames,
                                 self.pipeline.spec.preprocessing.scale,
                                 out=self.debug_pixels, scratch=self._debug_scratch)
