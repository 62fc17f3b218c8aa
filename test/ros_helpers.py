"""Test-side ROS helpers: a stand-in for the CARLA bridge's publishers and a command sink."""
import time
from pathlib import Path

import numpy as np
from carla_msgs.msg import CarlaEgoVehicleControl
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from av_td3_ros.tools.launch_runner import executable_module, parse_launch_file

REPO_LAUNCH = Path(__file__).resolve().parents[1] / 'launch'


def bgra_frame(k, height=600, width=800):
    """Return a deterministic bgra8 test frame that changes with `k`."""
    rows = np.arange(height, dtype=np.uint16)[:, None]
    cols = np.arange(width, dtype=np.uint16)[None, :]
    frame = np.empty((height, width, 4), np.uint8)
    frame[..., 0] = (rows + 3 * k) % 256
    frame[..., 1] = (cols + 5 * k) % 256
    frame[..., 2] = (rows + cols + 7 * k) % 256
    frame[..., 3] = 255
    return frame


class FakeBridge:
    """Publish camera, odometry and route like the CARLA bridge; collect control commands."""

    def __init__(self, context, role='ego_vehicle', name='fake_bridge'):
        """Create the node in `context` with the bridge's topics for `role`."""
        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
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

    def publish_route(self, length=100, spacing=2.0):
        """Publish a straight route along +x."""
        path = PathMsg()
        path.header.frame_id = 'map'
        for i in range(length):
            pose = PoseStamped()
            pose.pose.position.x = i * spacing
            pose.pose.orientation.w = 1.0
            path.poses.append(pose)
        self.route_pub.publish(path)

    def publish_odometry(self, speed=5.0):
        """Publish an odometry message at the route start, heading along +x."""
        odom = Odometry()
        odom.header.frame_id, odom.child_frame_id = 'map', 'ego_vehicle'
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = speed
        self.odom_pub.publish(odom)

    def image_msg(self, sec, data, height=600, width=800, encoding='bgra8', step=None):
        """Build an Image with stamp `sec` seconds (the test's frame id)."""
        msg = Image(height=height, width=width, encoding=encoding,
                    step=width * 4 if step is None else step)
        msg.header.stamp.sec = sec
        msg.header.frame_id = 'ego_vehicle/rgb_front'
        msg.data = data if isinstance(data, bytes) else data.tobytes()
        return msg

    def spin_until(self, predicate, timeout=10.0):
        """Spin until `predicate()` is true; return whether it became true in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

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

    def close(self):
        """Destroy the node."""
        self.executor.shutdown()
        self.node.destroy_node()


def shipped_params(tmp_path, config_name, **overrides):
    """Write the shipped config/<config_name>.yaml with `overrides` into `tmp_path`; return it."""
    import yaml
    content = yaml.safe_load((REPO_LAUNCH.parent / 'config' / f'{config_name}.yaml').read_text())
    (section,) = content.values()
    section['ros__parameters'].update(overrides)
    path = tmp_path / f'{config_name}_test.yaml'
    path.write_text(yaml.safe_dump(content))
    return path


def launch_nodes(start_node, tmp_path, launch_file, **arguments):
    """Start every node of an XML launch file through `start_node`, as run_launch would."""
    import yaml
    description = parse_launch_file(launch_file, {k: str(v) for k, v in arguments.items()})
    started = []
    for index, spec in enumerate(description.nodes):
        overrides = tmp_path / f'launch_params_{index}.yaml'
        overrides.write_text(yaml.safe_dump({'/**': {'ros__parameters': spec.params}}))
        module = executable_module(spec.package, spec.executable)
        started.append(start_node(module, *spec.ros_arguments(str(overrides))[1:],
                                  name=spec.name))
    return description, started
