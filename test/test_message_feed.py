# MessageFeed: the one mapping from bridge messages to assembler calls, shared by the trainer
# node and train_offline. Real ROS message classes, no DDS.
import numpy as np
import pytest
from carla_msgs.msg import CarlaEgoVehicleControl, CarlaEgoVehicleStatus
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import Image
from std_msgs.msg import String

from av_td3_ros.driving.ros_conversions import command_from_control_msg
from av_td3_ros.learning.message_feed import MessageFeed, input_topics
from av_td3_ros.policy.control import control_to_action
from av_td3_ros.task.transitions import (
    EpisodeConfig,
    EpisodeEnd,
    Transition,
    TransitionAssembler,
)

MS = 1_000_000


def stamped(msg, stamp_ns):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def image(stamp_ns, value, width=16, height=12):
    msg = Image(encoding='bgra8', width=width, height=height, step=width * 4)
    msg.data = bytes([value]) * (width * 4 * height)
    return stamped(msg, stamp_ns)


def odometry(stamp_ns, x):
    msg = Odometry()
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = 5.0
    return stamped(msg, stamp_ns)


def route():
    msg = Path()
    for i in range(200):
        pose = PoseStamped()
        pose.pose.position.x = 2.0 * i
        pose.pose.orientation.w = 1.0
        msg.poses.append(pose)
    return msg


def status(stamp_ns, steer, throttle):
    msg = CarlaEgoVehicleStatus()
    msg.control.steer, msg.control.throttle = steer, throttle
    return stamped(msg, stamp_ns)


def make_feed():
    assembler = TransitionAssembler(episode=EpisodeConfig(event_window=0.0))
    feed = MessageFeed(assembler, image_size=84)
    assert feed.feed('route', route()) is None
    return assembler, feed


def test_a_status_tick_is_the_action_of_the_newest_older_frame():
    assembler, feed = make_feed()
    controls = {}
    for k in range(1, 5):
        stamp = k * 50 * MS
        assert feed.feed('odometry', odometry(stamp, 0.25 * k)) is None
        assert feed.feed('camera', image(stamp, 10 * k)) is None
        # The bridge's status comes 20 ms after the frame the driver answered.
        tick = status(stamp + 20 * MS, 0.01 * k, 0.5)
        controls[k] = control_to_action(command_from_control_msg(tick.control))
        assert feed.feed('vehicle_status', tick) is None
    steps = [item for item in assembler.pop_output() if isinstance(item, Transition)]
    assert len(steps) >= 2
    for k, step in enumerate(steps, start=1):
        np.testing.assert_allclose(step.action, controls[k], rtol=0, atol=1e-6)
        assert step.next_frame.shape == (84, 84)


def test_a_status_before_any_frame_pairs_with_nothing():
    assembler, feed = make_feed()
    assert feed.feed('vehicle_status', status(50 * MS, 0.1, 0.5)) is None
    assert assembler.pop_output() == []


def test_refused_inputs_are_answered_with_a_reason_not_an_exception():
    _, feed = make_feed()
    broken = image(50 * MS, 0)
    broken.data = b'\x00' * 7  # not height * step bytes
    assert 'bad camera frame dropped' in feed.feed('camera', broken)
    assert 'route of 0 poses refused' in feed.feed('route', Path())
    command = stamped(CarlaEgoVehicleControl(), 50 * MS)
    command.steer = float('nan')
    assert 'command ignored' in feed.feed('command', command)


def test_an_episode_end_message_ends_the_episode():
    assembler, feed = make_feed()
    for k in range(1, 4):
        stamp = k * 50 * MS
        feed.feed('odometry', odometry(stamp, 0.25 * k))
        feed.feed('camera', image(stamp, 10 * k))
        feed.feed('command', stamped(CarlaEgoVehicleControl(throttle=0.5), stamp))
    feed.feed('episode_end', String(data='truncated:time_limit;steps=3'))
    ends = [item for item in assembler.pop_output() if isinstance(item, EpisodeEnd)]
    assert [(end.reason, end.needs_reset) for end in ends] == [('simulator: time_limit', False)]


def test_input_topics_follow_the_control_source_and_role():
    command = input_topics('/carla/{role}/rgb_front/image', 'command', 'hero')
    assert command['camera'] == '/carla/hero/rgb_front/image'
    assert command['command'] == '/carla/hero/vehicle_control_cmd'
    assert 'vehicle_status' not in command
    status_topics = input_topics('/cam', 'vehicle_status', 'hero')
    assert status_topics['vehicle_status'] == '/carla/hero/vehicle_status'
    assert 'command' not in status_topics
    with pytest.raises(ValueError, match='control_source'):
        input_topics('/cam', 'vehicle_cmd', 'hero')
