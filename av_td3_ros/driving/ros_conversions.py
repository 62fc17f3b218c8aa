"""Convert between ROS messages and the core's plain types (message classes, no rclpy).

Functions read messages by field name, so rclpy messages and rosbags-deserialised messages
both work (the bag tools use the same code as the nodes).
"""
from __future__ import annotations

import math

import numpy as np

from av_td3_ros.policy.control import ControlCommand
from av_td3_ros.policy.features import Pose2D, yaw_from_quaternion

NANOSECONDS_PER_SECOND = 1_000_000_000


def stamp_to_ns(stamp) -> int:
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * NANOSECONDS_PER_SECOND + int(stamp.nanosec)


def stamp_problem(stamp) -> str | None:
    """Return why a builtin_interfaces/Time is not a valid time, or None when it is.

    ROS times are non-negative with nanosec < 1e9; anything else comes from a broken
    publisher, and a frame or sample carrying it cannot be placed in time.
    """
    if int(stamp.sec) < 0:
        return f'negative stamp sec {int(stamp.sec)}'
    if not 0 <= int(stamp.nanosec) < NANOSECONDS_PER_SECOND:
        return f'stamp nanosec {int(stamp.nanosec)} out of [0, 1e9)'
    return None


def pose_from_odometry(msg) -> Pose2D:
    """Return the planar pose of a nav_msgs/Odometry."""
    position, orientation = msg.pose.pose.position, msg.pose.pose.orientation
    return Pose2D(position.x, position.y,
                  yaw_from_quaternion(orientation.x, orientation.y, orientation.z,
                                      orientation.w))


def speed_from_odometry(msg) -> float:
    """Return the speed (m/s) of a nav_msgs/Odometry, negative when reversing."""
    linear = msg.twist.twist.linear
    # hypot, not x ** 2: a float power raises OverflowError for |x| > 1e154 instead of inf.
    speed = math.hypot(linear.x, linear.y, linear.z)
    return -speed if linear.x < 0.0 else speed


def route_from_path(msg) -> np.ndarray:
    """Return the (M, 2) waypoints of a nav_msgs/Path."""
    points = np.empty((len(msg.poses), 2))
    for i, pose in enumerate(msg.poses):
        points[i, 0] = pose.pose.position.x
        points[i, 1] = pose.pose.position.y
    return points


def fill_control_msg(msg, command: ControlCommand, stamp, frame_id: str = ''):
    """Write a ControlCommand into a carla_msgs/CarlaEgoVehicleControl message."""
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.steer = float(command.steer)
    msg.throttle = float(command.throttle)
    msg.brake = float(command.brake)
    msg.hand_brake = bool(command.hand_brake)
    msg.reverse = bool(command.reverse)
    msg.gear = 0
    msg.manual_gear_shift = False
    return msg


def command_from_control_msg(msg) -> ControlCommand:
    """Read a carla_msgs/CarlaEgoVehicleControl into a ControlCommand."""
    return ControlCommand(steer=float(msg.steer), throttle=float(msg.throttle),
                          brake=float(msg.brake), hand_brake=bool(msg.hand_brake),
                          reverse=bool(msg.reverse))


def frame_stack_mono8(frames: np.ndarray, scale: str, out: np.ndarray | None = None,
                      scratch: np.ndarray | None = None) -> np.ndarray:
    """Return a (F, S, S) float32 frame stack as one (S, F*S) mono8 strip, oldest on the left.

    The same arithmetic as the driver's ~/debug/frame_stack image (scaled frames back to
    0..255, truncated to uint8), so offline evaluation writes bit-identical debug images.
    """
    count, size = frames.shape[0], frames.shape[1]
    out = np.zeros((size, size * count), np.uint8) if out is None else out
    scratch = np.zeros(frames.shape, np.float32) if scratch is None else scratch
    low = -1.0 if scale == 'zero_centered' else 0.0
    np.subtract(frames, low, out=scratch)
    scratch *= 255.0 / (1.0 - low)
    np.clip(scratch, 0.0, 255.0, out=scratch)
    # (F, S, S) -> (S, F, S) is the strip with the oldest frame on the left.
    out.reshape(size, count, size)[:] = scratch.transpose(1, 0, 2)
    return out
