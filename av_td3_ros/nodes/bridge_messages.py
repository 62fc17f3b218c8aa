"""The CARLA bridge's messages, as both simulator bridges (sim_bridge, metadrive_bridge) send."""
from __future__ import annotations

import math
from functools import partial
from typing import Protocol

from builtin_interfaces.msg import Time
from carla_msgs.msg import CarlaEgoVehicleStatus, CarlaLaneInvasionEvent, CarlaStatus
from geometry_msgs.msg import PoseStamped, Quaternion
from nav_msgs.msg import Odometry, Path
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32, Header, String

from av_td3_ros.nodes.transport import LATCHED, reliable

BRIDGE_QOS = reliable(10)
"""The CARLA bridge's QoS: reliable, volatile, depth 10."""


class Motion(Protocol):
    """What a tick's odometry is made of: map pose, body-frame velocities (x forward)."""

    x: float
    y: float
    yaw: float
    vx: float
    vy: float
    yaw_rate: float
    speed: float


def time_msg(stamp_ns: int) -> Time:
    """Return a builtin_interfaces/Time for integer nanoseconds."""
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def yaw_quaternion(yaw: float) -> Quaternion:
    """Return the quaternion of a rotation by `yaw` about z."""
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def camera_info(width: int, height: int, fov_deg: float, frame_id: str) -> CameraInfo:
    """Return the pinhole camera info CARLA derives from image size and field of view."""
    focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    cx, cy = width / 2.0, height / 2.0
    info = CameraInfo(height=height, width=width, distortion_model='plumb_bob')
    info.header.frame_id = frame_id
    info.d = [0.0] * 5
    info.k = [focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class VehicleTopics:
    """The CARLA bridge's topics for one vehicle and the world, as both bridges publish them.

    Creates the publishers (reliable depth 10; the route and episode_start latched) and
    reuses one message of each kind, so a tick only changes stamps and values.
    """

    def __init__(self, node: Node, role: str, width: int, height: int, fov_deg: float,
                 fixed_delta_seconds: float, synchronous_mode: bool):
        """Create the publishers of `role` on `node`."""
        self._node = node
        self._delta = fixed_delta_seconds
        prefix = f'/carla/{role}'
        publisher = partial(node.create_publisher, qos_profile=BRIDGE_QOS)
        self._pub_image = publisher(Image, f'{prefix}/rgb_front/image')
        self._pub_info = publisher(CameraInfo, f'{prefix}/rgb_front/camera_info')
        self._pub_odom = publisher(Odometry, f'{prefix}/odometry')
        self._pub_speed = publisher(Float32, f'{prefix}/speedometer')
        self._pub_status = publisher(CarlaEgoVehicleStatus, f'{prefix}/vehicle_status')
        self._pub_invasion = publisher(CarlaLaneInvasionEvent, f'{prefix}/lane_invasion')
        self._pub_waypoints = node.create_publisher(Path, f'{prefix}/waypoints', LATCHED)
        self._pub_world = publisher(CarlaStatus, '/carla/status')
        self._pub_clock = publisher(ClockMsg, '/clock')
        self._pub_start = node.create_publisher(Header, f'/av_td3/{role}/episode_start', LATCHED)
        self._pub_end = publisher(String, f'/av_td3/{role}/episode_end')

        self._role = role
        self._image = Image(height=height, width=width, encoding='bgra8', is_bigendian=0,
                            step=width * 4)
        self._image.header.frame_id = f'{role}/rgb_front'
        self._camera_info = camera_info(width, height, fov_deg, self._image.header.frame_id)
        self._odom = Odometry()
        self._odom.header.frame_id = 'map'
        self._odom.child_frame_id = role
        self._vehicle_status = CarlaEgoVehicleStatus()
        self._vehicle_status.header.frame_id = 'map'
        self._world_status = CarlaStatus(fixed_delta_seconds=fixed_delta_seconds,
                                         synchronous_mode=synchronous_mode,
                                         synchronous_mode_running=synchronous_mode)
        self._prev_velocity = None  # map-frame velocity of the previous tick

    def new_episode(self, stamp: Time, episode: int, route_xy, route_yaws):
        """Publish episode_start and the route (both latched); restart the acceleration."""
        self._prev_velocity = None
        self._pub_start.publish(Header(stamp=stamp, frame_id=str(episode)))
        path = Path(header=Header(frame_id='map', stamp=stamp))
        for (x, y), yaw in zip(route_xy, route_yaws, strict=True):
            pose = PoseStamped(header=path.header)
            pose.pose.position.x, pose.pose.position.y = float(x), float(y)
            pose.pose.orientation = yaw_quaternion(float(yaw))
            path.poses.append(pose)
        self._pub_waypoints.publish(path)

    def end_episode(self, text: str):
        """Publish an episode_end message."""
        self._pub_end.publish(String(data=text))

    def publish_tick(self, stamp: Time, frame: int, motion: Motion, control, pixels: bytes,
                     lane_markings=()):
        """Publish every topic of one tick with the tick's stamp; the image last.

        `motion` is the car's map pose and body-frame velocities, `control` the (steer,
        throttle, brake) applied, `pixels` the bgra8 frame, `lane_markings` the
        CarlaLaneInvasionEvent constants crossed in this tick (none: no event).
        """
        self._pub_clock.publish(ClockMsg(clock=stamp))
        self._world_status.frame = frame
        self._pub_world.publish(self._world_status)

        orientation = yaw_quaternion(motion.yaw)
        odom = self._odom
        odom.header.stamp = stamp
        odom.pose.pose.position.x = motion.x
        odom.pose.pose.position.y = motion.y
        odom.pose.pose.orientation = orientation
        odom.twist.twist.linear.x = motion.vx
        odom.twist.twist.linear.y = motion.vy
        odom.twist.twist.angular.z = motion.yaw_rate
        self._pub_odom.publish(odom)
        self._pub_speed.publish(Float32(data=float(motion.vx)))

        # map-frame velocity for the acceleration CARLA reports in vehicle_status
        cos_yaw, sin_yaw = math.cos(motion.yaw), math.sin(motion.yaw)
        velocity = (cos_yaw * motion.vx - sin_yaw * motion.vy,
                    sin_yaw * motion.vx + cos_yaw * motion.vy)
        status = self._vehicle_status
        status.header.stamp = stamp
        status.velocity = float(motion.speed)
        if self._prev_velocity is None:
            status.acceleration.linear.x = status.acceleration.linear.y = 0.0
        else:
            status.acceleration.linear.x = (velocity[0] - self._prev_velocity[0]) / self._delta
            status.acceleration.linear.y = (velocity[1] - self._prev_velocity[1]) / self._delta
        self._prev_velocity = velocity
        status.orientation = orientation
        status.control.header.stamp = stamp
        status.control.steer, status.control.throttle, status.control.brake = control
        self._pub_status.publish(status)

        if lane_markings:
            event = CarlaLaneInvasionEvent(crossed_lane_markings=list(lane_markings))
            event.header.stamp = stamp
            event.header.frame_id = f'{self._role}/lane_invasion'
            self._pub_invasion.publish(event)

        self._camera_info.header.stamp = stamp
        self._pub_info.publish(self._camera_info)
        self._image.header.stamp = stamp
        self._image.data = pixels
        try:
            self._pub_image.publish(self._image)
        except _rclpy.RCLError as error:
            # Fast DDS can refuse a large reliable sample under load; drop this frame only.
            self._node.get_logger().warning(f'image publish failed ({error}); frame dropped',
                                            throttle_duration_sec=5.0)
