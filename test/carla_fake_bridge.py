"""A fake CARLA world behind the ROS bridge's topics, for testing carla_episode_manager.

Written from carla-simulator/ros-bridge's source (CARLA cannot run here), with the same
topics, types and QoS for one ego vehicle:
- the ego vehicle: `/carla/<role>/odometry` (frame map, child <role>), the camera
  `/carla/<role>/rgb_front/camera_info` then `image` with the same header (camera.py),
  `vehicle_control_cmd` in (ego_vehicle.py);
- the `actor.pseudo.control` pseudo-actor (actor_control.py): `/carla/<role>/control/
  set_transform` (Pose) and `set_target_velocity` (Twist), applied at the next tick;
- carla_waypoint_publisher: `/carla/<role>/goal` in, `/carla/<role>/waypoints` out (latched),
  re-planned on a new goal and when the car moved more than 2 m between ticks ("repositioned").

Synchronous mode with synchronous_mode_wait_for_vehicle_control_command: `tick()` publishes
one frame and waits for the command answering it before the world moves on. The car is a
point with speed, heading and a crude throttle/brake/steer response; routes are straight
lines with 2 m spacing.
"""
import math
import time

import numpy as np
from carla_msgs.msg import CarlaEgoVehicleControl
from geometry_msgs.msg import Pose, PoseStamped, Twist
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.executors import TimeoutException
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import SpinningNode
from sensor_msgs.msg import CameraInfo, Image

DT = 0.05  # fixed_delta_seconds
REPOSITION_DISTANCE = 2.0  # carla_waypoint_publisher's WAYPOINT_DISTANCE
FREE_RUN_PERIOD = 0.02  # wall seconds per tick when no driver's command is awaited


class FakeCarlaWorld(SpinningNode):
    """One ego vehicle, its camera, the control pseudo-actor and the waypoint publisher."""

    spin_period = 0.01

    def __init__(self, context, role='ego_vehicle', start=(50.0, 20.0, 0.0), width=256,
                 height=144):
        """Create the node with the bridge's topics; the car stands at `start` (x, y, yaw)."""
        super().__init__(context, 'fake_carla_bridge')
        self.role, self.width, self.height = role, width, height
        self.x, self.y, self.yaw = start
        self.speed = 0.0
        self.time_ns = 1_000_000_000
        self.control = CarlaEgoVehicleControl()
        self.commands = []  # every command received, in order
        self.teleports = []  # Pose messages received
        self.velocities = []  # Twist messages received
        self.goals = []  # PoseStamped messages received
        self.frames = {}  # stamp (ns) -> (x, y) of every published frame
        self._pending_pose = None
        self._pending_twist = None
        self.goal = (200.0, 0.0)  # the waypoint publisher's first goal: "spawn point 0"
        base = f'/carla/{role}'
        bridge_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node = self.node
        self.odom_pub = node.create_publisher(Odometry, f'{base}/odometry', bridge_qos)
        self.info_pub = node.create_publisher(CameraInfo, f'{base}/rgb_front/camera_info',
                                              bridge_qos)
        self.image_pub = node.create_publisher(Image, f'{base}/rgb_front/image', bridge_qos)
        self.route_pub = node.create_publisher(PathMsg, f'{base}/waypoints', latched)
        node.create_subscription(CarlaEgoVehicleControl, f'{base}/vehicle_control_cmd',
                                 self._on_command, bridge_qos)
        node.create_subscription(Pose, f'{base}/control/set_transform', self._on_pose,
                                 bridge_qos)
        node.create_subscription(Twist, f'{base}/control/set_target_velocity',
                                 self._on_twist, bridge_qos)
        node.create_subscription(PoseStamped, f'{base}/goal', self._on_goal, bridge_qos)
        self.publish_route()

    # ------------------------------------------------------------------ inputs
    def _on_command(self, msg):
        self.commands.append(msg)
        self.control = msg

    def _on_pose(self, msg):
        self.teleports.append(msg)
        self._pending_pose = msg

    def _on_twist(self, msg):
        self.velocities.append(msg)
        self._pending_twist = msg

    def _on_goal(self, msg):
        self.goals.append(msg)
        self.goal = (msg.pose.position.x, msg.pose.position.y)
        self.publish_route()

    # ------------------------------------------------------------------ world
    def publish_route(self):
        """Plan a straight route from the car to the goal, like the waypoint publisher."""
        path = PathMsg()
        path.header.frame_id = 'map'
        path.header.stamp.sec, path.header.stamp.nanosec = divmod(self.time_ns, 10**9)
        gx, gy = self.goal
        count = max(2, int(math.hypot(gx - self.x, gy - self.y) / 2.0) + 1)
        for i in range(count):
            pose = PoseStamped()
            pose.pose.position.x = self.x + (gx - self.x) * i / (count - 1)
            pose.pose.position.y = self.y + (gy - self.y) * i / (count - 1)
            pose.pose.orientation.w = 1.0
            path.poses.append(pose)
        self.route_pub.publish(path)

    def step_world(self):
        """Advance one tick: apply a pending teleport / velocity, then the last command."""
        before = (self.x, self.y)
        if self._pending_pose is not None:
            pose, self._pending_pose = self._pending_pose, None
            self.x, self.y = pose.position.x, pose.position.y
            self.yaw = 2.0 * math.atan2(pose.orientation.z, pose.orientation.w)
        if self._pending_twist is not None:
            self.speed, self._pending_twist = self._pending_twist.linear.x, None
        else:
            c = self.control
            accel = 4.0 * c.throttle - 8.0 * c.brake - 0.3 * self.speed / 10.0
            self.speed = min(max(self.speed + accel * DT, 0.0), 20.0)
            self.yaw += 0.5 * c.steer * self.speed * DT
            self.x += self.speed * DT * math.cos(self.yaw)
            self.y += self.speed * DT * math.sin(self.yaw)
        self.time_ns += int(DT * 1e9)
        # The waypoint publisher compares the car's location tick to tick: a jump is a
        # repositioning, and it re-plans to its current goal.
        if math.hypot(self.x - before[0], self.y - before[1]) > REPOSITION_DISTANCE:
            self.publish_route()

    def publish_frame(self):
        """Publish odometry, camera_info and the image of the current tick (one stamp)."""
        sec, nanosec = divmod(self.time_ns, 10**9)
        self.frames[self.time_ns] = (self.x, self.y)
        odom = Odometry()
        odom.header.frame_id, odom.child_frame_id = 'map', self.role
        odom.header.stamp.sec, odom.header.stamp.nanosec = sec, nanosec
        odom.pose.pose.position.x, odom.pose.pose.position.y = self.x, self.y
        odom.pose.pose.orientation.z = math.sin(self.yaw / 2.0)
        odom.pose.pose.orientation.w = math.cos(self.yaw / 2.0)
        odom.twist.twist.linear.x = self.speed
        self.odom_pub.publish(odom)
        info = CameraInfo(width=self.width, height=self.height)
        info.header.frame_id = f'{self.role}/rgb_front'
        info.header.stamp = odom.header.stamp
        self.info_pub.publish(info)
        image = Image(width=self.width, height=self.height, encoding='bgra8',
                      step=self.width * 4)
        image.header = info.header
        shade = int(self.x * 5.0) % 256
        frame = np.full((self.height, self.width, 4), shade, np.uint8)
        frame[self.height // 2:, :, 1] = int(self.y * 5.0) % 256
        image.data = frame.tobytes()
        self.image_pub.publish(image)

    def tick(self, timeout=2.0, wait_for_command=True):
        """Publish this tick's frame, wait for its command (if asked), then step the world.

        Without a command to wait for (the test plays the driver) the world runs at a wall
        rate, like a simulator waiting on nobody: one tick per FREE_RUN_PERIOD, serving
        callbacks meanwhile. That rate models the simulator, it orders nothing: unpaced, the
        world outran the manager, whose odometry queue (depth 10) then dropped the samples
        near the goal, and the manager cannot be asked whether it has seen a frame (Fast DDS
        acknowledges only on its 3 s heartbeat). What must come before a step is waited
        for: the manager sends a teleport as velocity, pose, velocity on two topics, and a
        step between the pose and the last velocity would move the car on from the spawn
        point at its old speed.
        """
        started = time.monotonic()
        self.publish_frame()
        stamp = divmod(self.time_ns, 10**9)
        if wait_for_command:
            self.spin_until(lambda: any((c.header.stamp.sec, c.header.stamp.nanosec) == stamp
                                        for c in self.commands[-5:]), timeout)
        else:
            while (left := started + FREE_RUN_PERIOD - time.monotonic()) > 0:
                self.executor.spin_once(timeout_sec=left)
            self.serve_ready()
            if self._pending_pose is not None:
                self.spin_until(lambda: len(self.velocities) >= 2 * len(self.teleports),
                                timeout)
        self.step_world()

    def serve_ready(self):
        """Run every callback that is ready now, without waiting for more to arrive."""
        while True:
            try:
                handler, _, _ = self.executor.wait_for_ready_callbacks(timeout_sec=0.0)
            except TimeoutException:
                return
            handler()
            if handler.exception() is not None:
                raise handler.exception()

