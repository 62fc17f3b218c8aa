"""Test-side ROS helpers: spinning test nodes, messages, a stand-in for the CARLA bridge.

Helpers that need no rclpy are in helpers.py; fixtures in conftest.py.
"""
import time

from carla_msgs.msg import CarlaEgoVehicleControl
from geometry_msgs.msg import PoseStamped
from helpers import bgra_frame, straight_route
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header


def spin_until(executor, predicate, timeout, period=0.02):
    """Spin `executor` until `predicate()` holds; return whether it did before `timeout` s.

    One spin waits at most `period` s for work, so the predicate is checked that often.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=period)
    return predicate()


class SpinningNode:
    """A test-side node with its own executor in `context`; spin it with `spin_until`."""

    spin_timeout = 10.0
    """Default `spin_until` timeout (s)."""
    spin_period = 0.02
    """Longest wait (s) of one spin before the predicate is checked again."""

    def __init__(self, context, name):
        """Create node `name` and its executor in `context`."""
        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate, timeout=None):
        """Spin until `predicate()` holds; return whether it did in time."""
        return spin_until(self.executor, predicate,
                          self.spin_timeout if timeout is None else timeout, self.spin_period)

    def close(self):
        """Shut the executor down and destroy the node."""
        self.executor.shutdown()
        self.node.destroy_node()


def path_msg(points, frame_id='map'):
    """Return a nav_msgs/Path through `points` ((x, y) pairs), every pose facing +x."""
    path = PathMsg()
    path.header.frame_id = frame_id
    for x, y in points:
        pose = PoseStamped()
        pose.pose.position.x, pose.pose.position.y = float(x), float(y)
        pose.pose.orientation.w = 1.0
        path.poses.append(pose)
    return path


def odometry_msg(x=0.0, y=0.0, qz=0.0, qw=1.0, vx=5.0, vy=0.0, sec=0, nanosec=0, qx=0.0):
    """Return a nav_msgs/Odometry in the map frame for ego_vehicle with these fields."""
    odom = Odometry()
    odom.header.frame_id, odom.child_frame_id = 'map', 'ego_vehicle'
    odom.header.stamp.sec, odom.header.stamp.nanosec = sec, nanosec
    odom.pose.pose.position.x, odom.pose.pose.position.y = x, y
    odom.pose.pose.orientation.x = qx
    odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = qz, qw
    odom.twist.twist.linear.x, odom.twist.twist.linear.y = vx, vy
    return odom


class FakeBridge(SpinningNode):
    """Publish camera, odometry and route like the CARLA bridge; collect control commands."""

    def __init__(self, context, role='ego_vehicle', name='fake_bridge'):
        """Create the node in `context` with the bridge's topics for `role`."""
        super().__init__(context, name)
        base = f'/carla/{role}'
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, f'{base}/rgb_front/image', reliable)
        self.odom_pub = self.node.create_publisher(Odometry, f'{base}/odometry', reliable)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.route_pub = self.node.create_publisher(PathMsg, f'{base}/waypoints', latched)
        self.episode_pub = self.node.create_publisher(Header, f'/av_td3/{role}/episode_start',
                                                      10)
        self.commands = []
        self.node.create_subscription(CarlaEgoVehicleControl, f'{base}/vehicle_control_cmd',
                                      self.commands.append, reliable)

    def publish_route(self, points=None):
        """Publish a route (latched): `points`, or 100 poses 2 m apart along +x."""
        self.route_pub.publish(path_msg(straight_route(length=198.0) if points is None
                                        else points))

    def publish_odometry(self, speed=5.0):
        """Publish an odometry message at the route start, heading along +x."""
        self.odom_pub.publish(odometry_msg(vx=speed))

    def image_msg(self, sec, data, height=600, width=800, encoding='bgra8', step=None):
        """Build an Image with stamp `sec` seconds (the test's frame id)."""
        msg = Image(height=height, width=width, encoding=encoding,
                    step=width * 4 if step is None else step)
        msg.header.stamp.sec = sec
        msg.header.frame_id = 'ego_vehicle/rgb_front'
        msg.data = data if isinstance(data, bytes) else data.tobytes()
        return msg

    def wait_for_subscriber(self, publisher, timeout=60.0):
        """Wait until the node under test has matched `publisher`."""
        return self.spin_until(lambda: publisher.get_subscription_count() > 0, timeout)

    def commands_for(self, sec):
        """Return the commands stamped with frame `sec`."""
        return [c for c in self.commands
                if c.header.stamp.sec == sec and c.header.stamp.nanosec == 0]

    def send_frame_and_wait(self, sec, msg=None, timeout=10.0):
        """Publish odometry + frame `sec`; wait for the command carrying its stamp."""
        self.publish_odometry()
        self.image_pub.publish(msg if msg is not None else
                               self.image_msg(sec, bgra_frame(sec)))
        self.spin_until(lambda: self.commands_for(sec), timeout)
        return self.commands_for(sec)

    def warm_up(self, first_sec=1000, timeout=60.0, until_driving=True):
        """Send frames until one is answered (and, if `until_driving`, not by a full brake).

        Discovery is asymmetric: a best-effort frame sent right after matching can be lost,
        and the first frames may beat the odometry and route to the driver.
        """
        deadline = time.monotonic() + timeout
        sec = first_sec
        while time.monotonic() < deadline:
            commands = self.send_frame_and_wait(sec, timeout=2.0)
            if commands and (commands[0].brake < 1.0 or not until_driving):
                return True
            sec += 1
        return False
