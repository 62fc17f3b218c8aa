"""Feed one vehicle's bridge messages into a `TransitionAssembler` (no ROS imports).

The trainer node (live rclpy messages) and `train_offline` (rosbags messages from a bag) both
go through `MessageFeed`, so a recorded run is turned into exactly the transitions the graph
would have given. A message is any object with the ROS field names.
"""
from __future__ import annotations

import numpy as np

from av_td3_ros.driving.ros_conversions import (
    command_from_control_msg,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_to_ns,
)
from av_td3_ros.policy.control import control_to_action
from av_td3_ros.policy.features import resample_route, route_problem
from av_td3_ros.policy.preprocessing import ImageFormatError, ImageView, to_gray
from av_td3_ros.task.episode_end import parse_episode_end
from av_td3_ros.task.transitions import TransitionAssembler
from av_td3_ros.validation import check_choice

CONTROL_SOURCES = ('command', 'vehicle_status')
"""Where the applied action comes from: the driver's command, or the bridge's status."""
RECENT_FRAMES = 32
"""Frame stamps kept to pair a vehicle_status tick with the frame it answers."""


def input_topics(camera_topic: str, control_source: str, role: str) -> dict[str, str]:
    """Return {input kind: topic} for one vehicle (`camera_topic` may contain {role})."""
    check_choice('control_source', control_source, CONTROL_SOURCES)
    base = f'/carla/{role}'
    control = (f'{base}/vehicle_status' if control_source == 'vehicle_status'
               else f'{base}/vehicle_control_cmd')
    return {'camera': camera_topic.replace('{role}', role),
            'odometry': f'{base}/odometry', 'route': f'{base}/waypoints',
            control_source: control, 'collision': f'{base}/collision',
            'lane_invasion': f'{base}/lane_invasion',
            'episode_start': f'/av_td3/{role}/episode_start',
            'episode_end': f'/av_td3/{role}/episode_end'}


class MessageFeed:
    """Turn one vehicle's messages, by input kind, into assembler calls (never raising).

    `feed` returns None, or a sentence saying why the message was refused.
    """

    def __init__(self, assembler: TransitionAssembler, image_size: int,
                 route_spacing: float = 0.0):
        """Feed `assembler`, preprocessing frames to `image_size` squares as the driver does.

        `route_spacing` > 0 resamples each route as the driver's parameter of that name does.
        """
        self.assembler = assembler
        self.image_size = image_size
        self.route_spacing = route_spacing
        self.frame_stamps: list[int] = []  # recent frame stamps (vehicle_status pairing)
        self._handlers = {
            'camera': self.on_image, 'odometry': self.on_odometry, 'route': self.on_route,
            'command': self.on_command, 'vehicle_status': self.on_status,
            'collision': lambda msg: self.on_event(msg, 'collision'),
            'lane_invasion': lambda msg: self.on_event(msg, 'lane_invasion'),
            'episode_start': self.on_episode_start, 'episode_end': self.on_episode_end}

    def feed(self, kind: str, msg) -> str | None:
        """Hand `msg` of input `kind` (a key of `input_topics`) to its handler."""
        return self._handlers[kind](msg)

    def on_image(self, msg) -> str | None:
        """Preprocess the frame exactly as the driver does (uint8 grey square) and add it."""
        try:
            frame = to_gray(ImageView.from_msg(msg), self.image_size)
        except ImageFormatError as error:
            return f'bad camera frame dropped: {error}'
        stamp = stamp_to_ns(msg.header.stamp)
        self.frame_stamps.append(stamp)
        del self.frame_stamps[:-RECENT_FRAMES]
        self.assembler.on_frame(stamp, frame)
        return None

    def on_odometry(self, msg) -> str | None:
        """Add pose, speed and yaw rate; an unusable sample is refused."""
        problem = self.assembler.on_odometry(
            stamp_to_ns(msg.header.stamp), pose_from_odometry(msg), speed_from_odometry(msg),
            msg.twist.twist.angular.z)
        return None if problem is None else f'odometry ignored: {problem}'

    def on_route(self, msg) -> str | None:
        """Set the route; an unusable one counts as no route until a usable one arrives."""
        route = route_from_path(msg)
        if self.route_spacing > 0.0 and route_problem(route) is None:
            try:
                route = resample_route(route, self.route_spacing)
            except ValueError as error:  # too long to resample: no route, as a bad one
                self.assembler.on_route(np.zeros((0, 2)))
                return f'route of {len(msg.poses)} poses refused ({error}); no route'
        problem = self.assembler.on_route(route)
        if problem is None:
            return None
        return (f'route of {len(msg.poses)} poses refused ({problem}); no route until a '
                'usable one arrives')

    def on_command(self, msg) -> str | None:
        """Pair the driver's command with the frame carrying the same stamp."""
        return self._control(stamp_to_ns(msg.header.stamp), msg)

    def on_status(self, msg) -> str | None:
        """Pair the applied control with the newest frame older than the status tick."""
        stamp = stamp_to_ns(msg.header.stamp)
        older = [s for s in self.frame_stamps if s < stamp]
        return self._control(older[-1], msg.control) if older else None

    def _control(self, stamp: int, control) -> str | None:
        action = control_to_action(command_from_control_msg(control))
        problem = self.assembler.on_control(stamp, np.array(action))
        return None if problem is None else f'command ignored: {problem}'

    def on_event(self, msg, kind: str) -> None:
        """Add a collision or lane-invasion event at its stamp."""
        self.assembler.on_event(stamp_to_ns(msg.header.stamp), kind)

    def on_episode_start(self, msg) -> None:
        """Begin a new episode at the Header's stamp."""
        self.assembler.on_episode_start(stamp_to_ns(msg.stamp))

    def on_episode_end(self, msg) -> None:
        """End the episode from 'terminated:<reason>' or 'truncated:<reason>'."""
        # Only the head (kind and reason) is needed, and reading it cannot fail.
        end = parse_episode_end(msg.data.split(';')[0])
        self.assembler.on_episode_end(end.kind, end.reason)
