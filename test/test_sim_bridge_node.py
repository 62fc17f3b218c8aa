"""Tests of the sim_bridge node over real DDS: topics, synchronous stepping, timeout, reset."""
import math
from pathlib import Path

import numpy as np
import pytest
from carla_msgs.msg import CarlaEgoVehicleControl, CarlaEgoVehicleStatus, CarlaStatus
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_helpers import SpinningNode
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32, Header, String
from std_srvs.srv import Trigger

from av_td3_ros.task.episode_end import parse_episode_end

PARAMS = str(Path(__file__).resolve().parents[1] / 'config' / 'sim_bridge.yaml')
MODULE = 'av_td3_ros.nodes.sim_bridge'
DELTA_NS = 50_000_000  # fixed_delta_seconds 0.05 from the params file
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _ns(stamp):
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Probe(SpinningNode):
    """An in-process node recording everything the bridge publishes for ego_vehicle."""

    spin_timeout, spin_period = 15.0, 0.05

    def __init__(self, context):
        """Subscribe to every bridge topic and create the command publisher."""
        super().__init__(context, 'sim_bridge_probe')
        self.msgs = {}
        prefix = '/carla/ego_vehicle'
        topics = [
            (Image, f'{prefix}/rgb_front/image', RELIABLE),
            (CameraInfo, f'{prefix}/rgb_front/camera_info', RELIABLE),
            (Odometry, f'{prefix}/odometry', RELIABLE),
            (Float32, f'{prefix}/speedometer', RELIABLE),
            (CarlaEgoVehicleStatus, f'{prefix}/vehicle_status', RELIABLE),
            (CarlaStatus, '/carla/status', RELIABLE),
            (Clock, '/clock', RELIABLE),
            (String, '/av_td3/ego_vehicle/episode_end', RELIABLE),
            (Header, '/av_td3/ego_vehicle/episode_start', LATCHED),
            (PathMsg, f'{prefix}/waypoints', LATCHED),
        ]
        for msg_type, topic, qos in topics:
            self.msgs[topic] = []
            self.node.create_subscription(msg_type, topic, self.msgs[topic].append, qos)
        self.cmd = self.node.create_publisher(
            CarlaEgoVehicleControl, f'{prefix}/vehicle_control_cmd', RELIABLE)
        self.reset = self.node.create_client(Trigger, '/av_td3/ego_vehicle/reset_episode')

    def __getitem__(self, topic):
        """Return the messages received on `topic` so far."""
        return self.msgs[topic]

    def wait_connected(self):
        """Wait until the bridge sees our command publisher and publishes to our image sub.

        Our side seeing the bridge's endpoints does not mean the bridge has matched ours yet
        (DDS matching is not symmetric). The latched route and episode start arriving proves
        the bridge processed our readers.
        """
        assert self.spin_until(lambda: self.cmd.get_subscription_count() > 0
                               and self.node.count_publishers(
                                   '/carla/ego_vehicle/rgb_front/image') > 0)
        assert self.spin_until(lambda: all(
            sub.get_publisher_count() > 0 for sub in self.node.subscriptions))
        assert self.spin_until(lambda: self.msgs['/carla/ego_vehicle/waypoints']
                               and self.msgs['/av_td3/ego_vehicle/episode_start'])

    def send(self, stamp_ns=0, steer=0.0, throttle=0.0, brake=0.0):
        """Publish one control command with the given header stamp."""
        msg = CarlaEgoVehicleControl(steer=steer, throttle=throttle, brake=brake)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        self.cmd.publish(msg)

    def tick_of(self, throttle, timeout=15.0):
        """Wait for the tick of the command with this distinctive throttle; return its stamp.

        The bridge handles our commands in the order we sent them and each topic arrives in
        publish order, so once that tick is here on every stamped topic, so is every tick
        an earlier command caused: counting messages is exact from then on.
        """
        prefix = '/carla/ego_vehicle'
        status = self.msgs[f'{prefix}/vehicle_status']
        stamped = [self.msgs[f'{prefix}/{topic}'] for topic in (
            'vehicle_status', 'odometry', 'rgb_front/camera_info', 'rgb_front/image')]

        def stamp():
            ticks = [_ns(s.header.stamp) for s in status
                     if math.isclose(s.control.throttle, throttle, abs_tol=1e-6)]
            return ticks[-1] if ticks else None

        def everywhere(tick):
            return (all(any(_ns(m.header.stamp) == tick for m in msgs) for msgs in stamped)
                    and any(_ns(c.clock) == tick for c in self.msgs['/clock'])
                    and any(w.frame == tick // DELTA_NS for w in self.msgs['/carla/status']))

        assert self.spin_until(lambda: stamp() is not None and everywhere(stamp()), timeout), \
            f'no complete tick with throttle {throttle}'
        return stamp()


@pytest.fixture
def probe(make_probe):
    """Return a Probe in the test's ROS domain."""
    return make_probe(Probe)


def test_topics_and_one_tick_per_command(start_node, probe):
    # no watchdog: every tick after startup must come from one of our commands
    node = start_node(MODULE, '--params-file', PARAMS, '-p', 'step_timeout:=0.0',
                      '-p', 'image_width:=200', '-p', 'image_height:=120')
    probe.wait_connected()
    images = probe['/carla/ego_vehicle/rgb_front/image']
    status = probe['/carla/status']
    # Startup frame 0 may have been published before we connected: an unstamped command
    # starts the lockstep. Each one ticks once; one sent while the bridge is still matching
    # our endpoints on a loaded machine can be lost (or its frame can), so it is re-sent.
    handshakes = 0
    for _ in range(3):
        probe.send(0)
        handshakes += 1
        if probe.spin_until(lambda: any(_ns(i.header.stamp) > 0 for i in images), 10.0):
            break
    # A marker ends the handshakes: when its tick is in, so is a late tick of an earlier one.
    probe.send(0, throttle=0.05)
    handshakes += 1
    marker = probe.tick_of(0.05)
    assert _ns(images[-1].header.stamp) == marker, node.output()
    assert 0 < marker <= handshakes * DELTA_NS, node.output()
    assert _ns(images[-1].header.stamp) % DELTA_NS == 0
    base = len(images) - 1  # the lockstep is checked from this frame on
    commands = 0
    answered = []  # (stamp of the frame a command answered, its throttle)
    for throttle in [0.1 * i for i in range(1, 9)]:
        latest = _ns(images[-1].header.stamp)
        count = len(images)
        probe.send(latest, throttle=throttle)
        commands += 1
        answered.append((latest, throttle))
        assert probe.spin_until(lambda c=count: len(images) > c), node.output()
        assert _ns(images[-1].header.stamp) == latest + DELTA_NS
    # a stale (older-stamped) command must not tick; the next unstamped one does
    count = len(images)
    probe.send(_ns(images[-2].header.stamp), throttle=1.0)
    probe.send(0, throttle=0.95)  # the marker: a wrong tick of the stale one comes before it
    commands += 1
    marker = probe.tick_of(0.95)
    assert len(images) == count + 1 and _ns(images[-1].header.stamp) == marker
    assert len(images) - base == commands + 1  # one frame per command after the handshake

    # every image: bgra8 of the configured size, camera frame, stamps k * fixed_delta
    for image in images:
        assert image.encoding == 'bgra8'
        assert (image.width, image.height, image.step) == (200, 120, 800)
        assert len(image.data) == 200 * 120 * 4
        assert image.header.frame_id == 'ego_vehicle/rgb_front'
        pixels = np.frombuffer(image.data, np.uint8).reshape(120, 200, 4)
        assert np.all(pixels[..., 3] == 255)
    stamps = [_ns(i.header.stamp) for i in images[base:]]
    assert all(b - a == DELTA_NS for a, b in zip(stamps, stamps[1:], strict=False))

    # the other topics carry the same ticks: status frame k <-> stamp k * delta
    assert probe.spin_until(lambda: {s.frame for s in status}
                            >= {stamp // DELTA_NS for stamp in stamps})
    by_frame = {s.frame: s for s in status}
    for stamp in stamps:
        tick = by_frame[stamp // DELTA_NS]
        assert tick.fixed_delta_seconds == pytest.approx(0.05)
        assert tick.synchronous_mode and tick.synchronous_mode_running
    frames = sorted(by_frame)
    assert frames == list(range(frames[0], frames[0] + len(frames)))
    clock_stamps = {_ns(c.clock) for c in probe['/clock']}
    odom_by_stamp = {_ns(o.header.stamp): o for o in probe['/carla/ego_vehicle/odometry']}
    info_by_stamp = {_ns(c.header.stamp): c
                     for c in probe['/carla/ego_vehicle/rgb_front/camera_info']}
    vstatus = {_ns(v.header.stamp): v for v in probe['/carla/ego_vehicle/vehicle_status']}
    for stamp in stamps:
        assert stamp in clock_stamps
        odom = odom_by_stamp[stamp]
        assert (odom.header.frame_id, odom.child_frame_id) == ('map', 'ego_vehicle')
        info = info_by_stamp[stamp]
        assert (info.width, info.height) == (200, 120)
        assert info.header.frame_id == 'ego_vehicle/rgb_front'
        assert info.k[0] == pytest.approx(100.0)  # 90 deg fov: fx = width / 2
        assert vstatus[stamp].header.frame_id == 'map'
    # vehicle_status reports the control applied in the tick each command caused
    for stamp, throttle in answered:
        applied = vstatus[stamp + DELTA_NS].control
        assert applied.throttle == pytest.approx(throttle)
        assert applied.header.stamp == vstatus[stamp + DELTA_NS].header.stamp
    # The speedometer is unstamped: wait for the last tick's speed (the speed grows each tick).
    speeds = probe['/carla/ego_vehicle/speedometer']
    last = odom_by_stamp[stamps[-1]]
    assert probe.spin_until(lambda: speeds and speeds[-1].data == pytest.approx(
        last.twist.twist.linear.x, rel=1e-5)), (speeds[-3:], last.twist.twist.linear.x)
    assert len(speeds) >= len(stamps) and speeds[-1].data > 0.0
    # the car moved along its heading
    first = odom_by_stamp[stamps[0]]
    q = first.pose.pose.orientation
    yaw = math.atan2(2.0 * q.w * q.z, 1.0 - 2.0 * q.z * q.z)
    dx = last.pose.pose.position.x - first.pose.pose.position.x
    dy = last.pose.pose.position.y - first.pose.pose.position.y
    assert math.hypot(dx, dy) > 0.1
    assert math.cos(yaw) * dx + math.sin(yaw) * dy > 0.0


def test_step_timeout_ticks_and_auto_reset(start_node, probe):
    node = start_node(MODULE, '--params-file', PARAMS, '-p', 'step_timeout:=0.2',
                      '-p', 'max_episode_steps:=3', '-p', 'seed:=10')
    probe.wait_connected()
    ends = probe['/av_td3/ego_vehicle/episode_end']
    starts = probe['/av_td3/ego_vehicle/episode_start']
    # without any command the world ticks every step_timeout; 3 steps end an episode, and
    # episode e ends at tick 4e + 3 (its reset tick 4e, then 3 steps); tick 4e + 4 resets
    def restarted():
        starts_ns = {_ns(s.stamp) for s in starts}
        return any(parse_episode_end(e.data).stamp_ns + DELTA_NS in starts_ns for e in ends)

    assert probe.spin_until(restarted, timeout=15.0), node.output()
    assert ends[0].data.startswith('truncated:time_limit;return=')
    for text in (e.data for e in ends):
        end = parse_episode_end(text)
        assert (end.kind, end.reason, end.steps) == ('truncated', 'time_limit', 3)
        assert isinstance(end.episode_return, float)
        assert (end.stamp_ns // DELTA_NS) % 4 == 3
    for start in starts:
        assert _ns(start.stamp) == 4 * int(start.frame_id) * DELTA_NS
    assert node.wait_for_output('return', timeout=5.0)  # the per-episode progress line


def test_reset_service_starts_a_new_episode(start_node, probe):
    node = start_node(MODULE, '--params-file', PARAMS, '-p', 'step_timeout:=0.0')
    probe.wait_connected()
    starts = probe['/av_td3/ego_vehicle/episode_start']
    paths = probe['/carla/ego_vehicle/waypoints']
    status = probe['/carla/status']
    images = probe['/carla/ego_vehicle/rgb_front/image']
    # latched topics reach a late subscriber: episode 0 started at sim time 0
    assert probe.spin_until(lambda: starts and paths), node.output()
    assert starts[0].frame_id == '0' and _ns(starts[0].stamp) == 0
    path = paths[0]
    assert path.header.frame_id == 'map' and len(path.poses) > 100
    track_0 = [(p.pose.position.x, p.pose.position.y) for p in path.poses]

    probe.send(0, throttle=0.5)  # tick 1
    assert probe.spin_until(lambda: status and status[-1].frame == 1), node.output()
    assert probe.reset.wait_for_service(timeout_sec=10.0)
    future = probe.reset.call_async(Trigger.Request())
    assert probe.spin_until(future.done), node.output()
    response = future.result()
    assert response.success
    fields = dict(item.split('=') for item in response.message.split(';'))
    assert fields['episode'] == '1'
    assert int(fields['stamp_ns']) == 2 * DELTA_NS  # the reset is tick 2
    assert int(fields['previous_steps']) == 1
    assert probe.spin_until(lambda: len(starts) >= 2 and len(paths) >= 2
                            and status[-1].frame == 2
                            and _ns(images[-1].header.stamp) == 2 * DELTA_NS)
    assert starts[-1].frame_id == '1' and _ns(starts[-1].stamp) == 2 * DELTA_NS
    track_1 = [(p.pose.position.x, p.pose.position.y) for p in paths[-1].poses]
    assert track_1 != track_0  # episode 1 runs on the track of seed + 1
    # the new episode starts at rest on its first waypoint
    odom = probe['/carla/ego_vehicle/odometry'][-1]
    assert _ns(odom.header.stamp) == 2 * DELTA_NS
    assert math.hypot(odom.pose.pose.position.x - track_1[0][0],
                      odom.pose.pose.position.y - track_1[0][1]) < 0.5
    assert abs(odom.twist.twist.linear.x) < 0.5
    # a requested reset does not publish episode_end
    assert probe['/av_td3/ego_vehicle/episode_end'] == []


def test_without_auto_reset_the_world_waits_for_reset(start_node, probe):
    node = start_node(MODULE, '--params-file', PARAMS, '-p', 'step_timeout:=0.0',
                      '-p', 'max_episode_steps:=2', '-p', 'auto_reset:=false')
    probe.wait_connected()
    ends = probe['/av_td3/ego_vehicle/episode_end']
    probe.send(0, throttle=1.0)
    probe.send(0, throttle=1.0)  # tick 2 ends episode 0
    assert probe.spin_until(lambda: ends, timeout=10.0), node.output()
    assert parse_episode_end(ends[0].data).stamp_ns == 2 * DELTA_NS
    # Commands do not move a finished episode. This one answers its last frame: it would
    # tick a running episode, and after the reset it would be stale, so no order can make a
    # correct bridge tick for it. Its tick is nothing to wait for; its acknowledgement shows
    # it is queued at the bridge, whose executor takes it before a later service request.
    probe.send(2 * DELTA_NS, throttle=1.0)
    assert probe.cmd.wait_for_all_acked(Duration(seconds=15.0))
    assert probe.reset.wait_for_service(timeout_sec=10.0)
    future = probe.reset.call_async(Trigger.Request())
    assert probe.spin_until(future.done)
    assert future.result().message.startswith('episode=1;stamp_ns=150000000;')  # tick 3
    probe.send(0, throttle=0.65)  # stepping again; the marker shows no tick came between
    assert probe.tick_of(0.65) == 4 * DELTA_NS, node.output()
    vstatus = probe['/carla/ego_vehicle/vehicle_status']
    after_end = [(_ns(v.header.stamp), v.control.throttle) for v in vstatus
                 if _ns(v.header.stamp) > 2 * DELTA_NS]
    assert after_end == [(3 * DELTA_NS, 0.0), (4 * DELTA_NS, pytest.approx(0.65))]
    assert len(ends) == 1


def test_bad_commands_never_end_the_simulator(start_node, probe):
    node = start_node(MODULE, '--params-file', PARAMS, '-p', 'step_timeout:=0.0',
                      '-p', 'image_width:=64', '-p', 'image_height:=48')
    probe.wait_connected()
    images = probe['/carla/ego_vehicle/rgb_front/image']
    nan, inf = float('nan'), float('inf')
    for values in ((nan, nan, nan), (inf, -inf, inf), (-inf, inf, -inf), (1e308, -1e308, 0.0),
                   (0.0, 0.0, nan)):
        probe.send(0, *values)  # unstamped: each one ticks the world
    for stamp_ns in (2**63 - 1, 1, 4294967295 * 1_000_000_000):
        probe.send(stamp_ns, 0.1, 0.5, 0.0)
    # Still ticking and answering: a command for the newest frame advances the world.
    # A marker after them: once its tick is in, the ticks of the sends above have landed.
    probe.send(0, 0.0, 0.3, 0.0)
    marker = probe.tick_of(0.3)
    assert _ns(images[-1].header.stamp) == marker
    probe.send(marker, 0.0, 0.2, 0.0)
    assert probe.spin_until(lambda: _ns(images[-1].header.stamp) == marker + DELTA_NS), \
        node.output()
    assert node.proc.poll() is None and 'Traceback' not in node.output()
