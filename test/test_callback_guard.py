# guard_callback over real DDS: an exception in a subscription, timer or service callback is
# logged with the message that caused it, reported to on_error, and the node goes on.
import pytest
from ros_helpers import SpinningNode
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from av_td3_ros.nodes.callback_guard import describe_message
from av_td3_ros.nodes.node_main import guard_callback
from av_td3_ros.nodes.transport import shared_memory_limit, shared_memory_segment


@pytest.fixture
def spinner(make_probe):
    return make_probe(SpinningNode, 'guard_test')


def test_a_raising_subscription_callback_never_reaches_spin(spinner):
    node = spinner.node
    handled, errors = [], []

    def on_header(msg):
        if msg.frame_id == 'poison':
            raise ValueError('route has no two distinct points')
        handled.append(msg.frame_id)

    guarded = guard_callback(node, on_header, on_error=errors.append)
    node.create_subscription(Header, 'guard_topic', guarded, 10)
    publisher = node.create_publisher(Header, 'guard_topic', 10)
    assert spinner.spin_until(lambda: publisher.get_subscription_count() > 0)
    for frame_id in ('a', 'poison', 'b', 'poison', 'c'):
        publisher.publish(Header(frame_id=frame_id))
    # spin_once would raise here without the guard (and rclpy.spin would end the process).
    assert spinner.spin_until(lambda: handled == ['a', 'b', 'c'])
    assert guarded.errors == 2 and [m.frame_id for m in errors] == ['poison', 'poison']
    assert guarded.last_error == 'ValueError: route has no two distinct points'


def test_timers_and_services_are_guarded_too(spinner):
    node = spinner.node
    ticks = []

    def tick():
        ticks.append(1)
        raise RuntimeError('boom')

    timer_guard = guard_callback(node, tick)
    node.create_timer(0.01, timer_guard)
    assert spinner.spin_until(lambda: len(ticks) >= 3)  # it keeps firing after failures
    assert timer_guard.errors >= 3

    def reset(request, response):
        raise KeyError('no episode')

    node.create_service(Trigger, 'guard_reset', guard_callback(node, reset))
    client = node.create_client(Trigger, 'guard_reset')
    assert spinner.spin_until(client.service_is_ready)
    future = client.call_async(Trigger.Request())
    assert spinner.spin_until(future.done)  # answered (with the default response)
    assert future.result().success is False


def test_on_error_failing_is_contained(spinner):
    def on_error(msg):
        raise OSError('disk full')

    guarded = guard_callback(spinner.node, lambda msg: 1 / 0, on_error=on_error)
    assert guarded(Header()) is None
    assert guarded.errors == 1


def test_describe_message_names_stamp_frame_and_shape():
    image = Image(height=3, width=4, encoding='bgra8', step=16)
    image.header.stamp.sec, image.header.stamp.nanosec = 12, 5
    image.header.frame_id = 'cam'
    image.data = bytes(48)
    text = describe_message(image)
    for part in ('Image', 'stamp 12.000000005', "frame 'cam'", 'encoding bgra8', 'height 3',
                 'width 4', 'step 16', '48 data'):
        assert part in text
    assert describe_message(None) == 'no message (timer)'


def test_shared_memory_limit_of_the_shipped_profile(tmp_path):
    from pathlib import Path
    profile = Path(__file__).resolve().parents[1] / 'config' / 'fastdds_large_images.xml'
    segment = shared_memory_segment(str(profile))
    assert segment == 64 * 2**20
    assert 4096 * 3072 * 4 < segment  # the largest camera the README claims
    assert '64 MiB' in shared_memory_limit(str(profile))
    broken = tmp_path / 'broken.xml'
    broken.write_text('<dds><oops')
    assert shared_memory_segment(str(broken)) is None
    assert 'KiB' in shared_memory_limit(str(broken))
    assert 'unset' in shared_memory_limit('')
