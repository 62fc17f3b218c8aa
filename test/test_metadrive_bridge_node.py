"""Tests of the metadrive_bridge node over real DDS (types, frames, determinism, faults).

They run MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes (scripts/test.sh
does) and fail without it; `-m "not metadrive"` leaves them out. Small camera, one short
episode or two each.
"""
import math
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from carla_msgs.msg import (
    CarlaCollisionEvent,
    CarlaEgoVehicleControl,
    CarlaEgoVehicleStatus,
    CarlaLaneInvasionEvent,
    CarlaStatus,
)
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import SpinningNode
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32, Header, String
from std_srvs.srv import Trigger

from av_td3_ros.nodes.metadrive_bridge import METADRIVE_BRIDGE
from av_td3_ros.nodes.schema import load_params_file
from av_td3_ros.sim.metadrive_client import default_python
from av_td3_ros.task.episode_end import parse_episode_end

pytestmark = pytest.mark.metadrive
REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / 'config' / 'metadrive_bridge.yaml')
MODULE = 'av_td3_ros.nodes.metadrive_bridge'
DELTA_NS = 100_000_000  # one MetaDrive step
WIDTH, HEIGHT = 64, 48
PREFIX = '/carla/ego_vehicle'
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
TOPICS = {
    f'{PREFIX}/rgb_front/image': (Image, RELIABLE),
    f'{PREFIX}/rgb_front/camera_info': (CameraInfo, RELIABLE),
    f'{PREFIX}/odometry': (Odometry, RELIABLE),
    f'{PREFIX}/speedometer': (Float32, RELIABLE),
    f'{PREFIX}/vehicle_status': (CarlaEgoVehicleStatus, RELIABLE),
    f'{PREFIX}/collision': (CarlaCollisionEvent, RELIABLE),
    f'{PREFIX}/lane_invasion': (CarlaLaneInvasionEvent, RELIABLE),
    f'{PREFIX}/waypoints': (PathMsg, LATCHED),
    '/carla/status': (CarlaStatus, RELIABLE),
    '/clock': (Clock, RELIABLE),
    '/av_td3/ego_vehicle/episode_start': (Header, LATCHED),
    '/av_td3/ego_vehicle/episode_end': (String, RELIABLE),
}
"""Every topic the CARLA bridge (and sim_bridge) publishes that this bridge publishes too."""


def _ns(stamp):
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Probe(SpinningNode):
    """Record everything the bridge publishes; send commands; call the reset service."""

    spin_timeout, spin_period = 60.0, 0.02

    def __init__(self, context):
        """Subscribe to every bridge topic; create the command publisher and reset client."""
        super().__init__(context, 'metadrive_probe')
        self.msgs = {}
        for topic, (msg_type, qos) in TOPICS.items():
            self.msgs[topic] = []
            self.node.create_subscription(msg_type, topic, self.msgs[topic].append, qos)
        self.cmd = self.node.create_publisher(
            CarlaEgoVehicleControl, f'{PREFIX}/vehicle_control_cmd', RELIABLE)
        self.reset = self.node.create_client(Trigger, '/av_td3/ego_vehicle/reset_episode')

    def __getitem__(self, topic):
        """Return the messages received on `topic` (a short name under PREFIX, or full)."""
        return self.msgs[topic if topic.startswith('/') else f'{PREFIX}/{topic}']

    @property
    def latest(self) -> int:
        """Return the stamp (ns) of the newest image, -1 before any."""
        images = self['rgb_front/image']
        return _ns(images[-1].header.stamp) if images else -1

    def connect(self):
        """Wait for the latched episode start and route, then tick once (a first image).

        The startup frame may have gone out before our readers matched, or arrive late: the
        tick of an unstamped command is the first frame newer than the episode start. One
        sent while the bridge still matches our writer can be lost: resent.
        """
        starts = self['/av_td3/ego_vehicle/episode_start']
        assert self.spin_until(lambda: self['waypoints'] and starts)
        assert self.spin_until(lambda: self.cmd.get_subscription_count() > 0)
        first = _ns(starts[-1].stamp)
        for _ in range(3):
            self.send(0)
            if self.spin_until(lambda: self.latest > first, 20.0):
                return
        raise AssertionError('no image after three commands')

    def send(self, stamp_ns, steer=0.0, throttle=0.0, brake=0.0):
        """Publish one command answering the frame stamped `stamp_ns`."""
        msg = CarlaEgoVehicleControl(steer=steer, throttle=throttle, brake=brake)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        self.cmd.publish(msg)

    def step(self, steer=0.0, throttle=0.0, brake=0.0, timeout=60.0):
        """Answer the latest frame and wait for the next one; return its stamp."""
        latest = self.latest
        self.send(latest, steer, throttle, brake)
        assert self.spin_until(lambda: self.latest > latest, timeout), 'no frame for a command'
        return self.latest

    def call_reset(self):
        """Call reset_episode and return the response."""
        assert self.reset.wait_for_service(timeout_sec=30.0)
        future = self.reset.call_async(Trigger.Request())
        assert self.spin_until(future.done, 120.0)
        return future.result()

    def ends(self):
        """Return the episode_end messages as parsed EpisodeEndMessages."""
        return [parse_episode_end(m.data) for m in self['/av_td3/ego_vehicle/episode_end']]


@pytest.fixture
def probe(make_probe):
    """Return a Probe in the test's ROS domain (failing first without the MetaDrive venv)."""
    assert default_python().is_file(), (
        f'no MetaDrive venv ({default_python()}): run `bash scripts/setup.sh --metadrive`, or '
        'deselect with -m "not metadrive"')
    return make_probe(Probe)


def start_bridge(start_node, tmp_path, *params):
    """Start the bridge with a small camera and no watchdog ticks, plus `params`."""
    args = ['--params-file', PARAMS, '-p', f'image_width:={WIDTH}',
            '-p', f'image_height:={HEIGHT}', '-p', 'step_timeout:=0.0',
            '-p', f'run_dir:={tmp_path / "metadrive"}']
    for param in params:
        args += ['-p', param]
    return start_node(MODULE, *args)


# Test if config/metadrive_bridge.yaml sets every parameter of the schema, to valid values.
def test_parameter_file_matches_the_schema():
    values = load_params_file(REPO / 'config' / 'metadrive_bridge.yaml', 'metadrive_bridge')
    assert sorted(values) == sorted(METADRIVE_BRIDGE.params)
    assert METADRIVE_BRIDGE.read(values) == METADRIVE_BRIDGE.defaults()


# Test if the bridge publishes the CARLA bridge's topics, types and frames, one tick per
# command, lane invasions with CARLA's constants, and an out_of_road episode end with its
# return and route completion.
def test_messages_match_the_carla_bridge(start_node, probe, tmp_path):
    node = start_bridge(start_node, tmp_path, 'seed:=5', 'traffic_density:=0.0')
    probe.connect()
    types = dict(probe.node.get_topic_names_and_types())
    for topic, (msg_type, _) in TOPICS.items():
        module = msg_type.__module__.split('.')[0]
        assert types.get(topic) == [f'{module}/msg/{msg_type.__name__}'], topic

    stamps = [probe.latest]
    for _ in range(12):
        stamps.append(probe.step(throttle=0.8))
    assert all(b - a == DELTA_NS for a, b in zip(stamps, stamps[1:], strict=False))
    while not probe.ends() and len(stamps) < 150:  # turn left until off the road
        stamps.append(probe.step(steer=-0.6, throttle=0.6))
    assert probe.spin_until(lambda: probe.ends()), node.output()
    end = probe.ends()[0]
    assert (end.kind, end.reason) == ('terminated', 'out_of_road'), node.output()
    # MetaDrive's summed reward and the share of the route driven before leaving the road
    assert end.episode_return is not None and math.isfinite(end.episode_return)
    assert 0.0 < float(dict(end.extra)['route_completion']) < 100.0
    # episode_end follows its tick's image: one more command may already have reset
    assert end.stamp_ns in stamps[-2:]

    for image in probe['rgb_front/image']:
        assert (image.encoding, image.width, image.height, image.step) == (
            'bgra8', WIDTH, HEIGHT, WIDTH * 4)
        assert image.header.frame_id == 'ego_vehicle/rgb_front'
        pixels = np.frombuffer(image.data, np.uint8).reshape(HEIGHT, WIDTH, 4)
        assert np.all(pixels[..., 3] == 255) and pixels[..., :3].std() > 0
    info = probe['rgb_front/camera_info'][-1]
    assert info.header.frame_id == 'ego_vehicle/rgb_front'
    assert info.k[0] == pytest.approx(WIDTH / 2)  # 90 degree FOV
    assert probe.spin_until(lambda: {_ns(o.header.stamp) for o in probe['odometry']}
                            >= set(stamps))
    for odom in probe['odometry']:
        assert (odom.header.frame_id, odom.child_frame_id) == ('map', 'ego_vehicle')
    odoms = {_ns(o.header.stamp): o for o in probe['odometry']}
    yaws = [2 * math.atan2(odoms[s].pose.pose.orientation.z, odoms[s].pose.pose.orientation.w)
            for s in stamps if s <= end.stamp_ns]
    assert yaws[-1] > yaws[12] + 0.2  # steer < 0 turns left: counter-clockwise in map
    assert odoms[stamps[12]].twist.twist.linear.x > 1.0
    assert probe.spin_until(lambda: any(s.frame == end.stamp_ns // DELTA_NS
                                        for s in probe['/carla/status']))
    status = {s.frame: s for s in probe['/carla/status']}
    assert status[end.stamp_ns // DELTA_NS].fixed_delta_seconds == pytest.approx(0.1)
    assert status[end.stamp_ns // DELTA_NS].synchronous_mode
    assert probe.spin_until(lambda: {_ns(c.clock) for c in probe['/clock']} >= set(stamps))
    assert probe.spin_until(lambda: any(_ns(v.header.stamp) == end.stamp_ns
                                        for v in probe['vehicle_status']))
    vstatus = {_ns(v.header.stamp): v for v in probe['vehicle_status']}
    assert vstatus[end.stamp_ns].control.steer == pytest.approx(-0.6)
    assert vstatus[end.stamp_ns].header.frame_id == 'map'

    route = probe['waypoints'][0]
    assert route.header.frame_id == 'map' and len(route.poses) > 50
    xy = np.array([(p.pose.position.x, p.pose.position.y) for p in route.poses])
    spacing = np.hypot(*np.diff(xy, axis=0).T)
    assert np.all((spacing > 0.5) & (spacing < 1.5))
    first = odoms[stamps[0]].pose.pose.position
    assert math.hypot(xy[0, 0] - first.x, xy[0, 1] - first.y) < 6.0

    invasions = probe['lane_invasion']
    assert invasions, 'leaving the road crosses lines'
    for event in invasions:
        assert event.header.frame_id == 'ego_vehicle/lane_invasion'
        assert set(event.crossed_lane_markings) <= {CarlaLaneInvasionEvent.LANE_MARKING_SOLID,
                                                    CarlaLaneInvasionEvent.LANE_MARKING_BROKEN}
    # auto_reset: the next command starts episode 1 (unstamped: episode_end can overtake the
    # last image, so the latest image seen may be an older one)
    probe.send(0)
    assert probe.spin_until(lambda: probe['/av_td3/ego_vehicle/episode_start'][-1].frame_id
                            == '1')


def _episode(probe, commands):
    """Drive one episode's `commands` from its first frame; return (poses, images)."""
    poses, images = [], []
    for command in [None, *commands]:
        stamp = probe.latest if command is None else probe.step(*command)
        assert probe.spin_until(lambda s=stamp: any(
            _ns(o.header.stamp) == s for o in probe['odometry']))
        (odom,) = [o for o in probe['odometry'] if _ns(o.header.stamp) == stamp]
        pose = odom.pose.pose
        poses.append((pose.position.x, pose.position.y, pose.orientation.z, pose.orientation.w,
                      odom.twist.twist.linear.x))
        (image,) = [i for i in probe['rgb_front/image'] if _ns(i.header.stamp) == stamp]
        images.append(np.frombuffer(image.data, np.uint8).reshape(HEIGHT, WIDTH, 4))
    return poses, images


# Test if two episodes of one seed, driven by the same commands, publish the same poses and
# the same images (at most 1 % of pixels may differ, as in test_metadrive_client).
def test_seeded_episode_is_deterministic(start_node, probe, tmp_path):
    start_bridge(start_node, tmp_path, 'seed:=11', 'scenarios:=1', 'traffic_density:=0.0')
    probe.connect()
    commands = [(0.0, 0.8, 0.0)] * 8 + [(0.3, 0.5, 0.0)] * 4 + [(0.0, 0.0, 1.0)] * 2
    runs = []
    for episode in ('1', '2'):
        response = probe.call_reset()
        assert response.success and response.message.startswith(f'episode={episode};')
        assert probe.spin_until(lambda e=episode: probe['/av_td3/ego_vehicle/episode_start'][-1]
                                .frame_id == e)
        stamp = int(re.search(r'stamp_ns=(\d+)', response.message).group(1))
        assert probe.spin_until(lambda s=stamp: probe.latest == s)
        runs.append(_episode(probe, commands))
    (poses_a, images_a), (poses_b, images_b) = runs
    assert np.allclose(poses_a, poses_b, rtol=0.0, atol=1e-6)
    for a, b in zip(images_a, images_b, strict=True):
        assert (a != b).any(axis=2).mean() <= 0.01
    assert abs(poses_a[-1][0] - poses_a[0][0]) > 1.0  # it did drive


# Test if a NaN command and a killed simulator each end the episode with their reason, and
# the node goes on: new episodes start, with a new worker after the kill.
def test_bad_command_and_simulator_fault_end_episodes(start_node, probe, tmp_path):
    node = start_bridge(start_node, tmp_path, 'seed:=3')
    probe.connect()
    probe.step(throttle=0.5)
    probe.send(probe.latest, steer=float('nan'), throttle=0.5)
    assert probe.spin_until(lambda: probe.ends()), node.output()
    assert (probe.ends()[0].kind, probe.ends()[0].reason) == ('truncated', 'bad_command')
    probe.send(0)  # the next tick starts episode 1 (unstamped: see the first test)
    assert probe.spin_until(lambda: probe['/av_td3/ego_vehicle/episode_start'][-1].frame_id
                            == '1')

    (pid,) = re.findall(r'worker pid (\d+)', node.output())
    os.kill(int(pid), signal.SIGKILL)
    probe.send(0, throttle=0.5)
    assert probe.spin_until(lambda: len(probe.ends()) == 2), node.output()
    assert (probe.ends()[1].kind, probe.ends()[1].reason) == ('truncated', 'simulator_fault')
    probe.send(0)  # a new worker, episode 2
    assert probe.spin_until(lambda: probe['/av_td3/ego_vehicle/episode_start'][-1].frame_id
                            == '2', 120.0), node.output()
    probe.step(throttle=0.5)
    assert node.proc.poll() is None, node.output()
