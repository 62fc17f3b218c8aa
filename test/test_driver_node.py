# Test the driver node over real DDS: one command per frame, safety stops, bad input.
import math

import numpy as np
import pytest
import torch
from ros_helpers import REPO_LAUNCH, FakeBridge, bgra_frame, launch_nodes

from av_td3_ros.checkpoint import PolicySpec, save_policy
from av_td3_ros.networks import ActorPolicy, NetworkConfig

DRIVER_LAUNCH = REPO_LAUNCH / 'driver.launch.xml'


def assert_in_range(command):
    assert -1.0 <= command.steer <= 1.0
    assert 0.0 <= command.throttle <= 1.0
    assert 0.0 <= command.brake <= 1.0
    assert not (command.throttle > 0.0 and command.brake > 0.0)
    assert all(math.isfinite(v) for v in (command.steer, command.throttle, command.brake))


def start_driver(start_node, tmp_path, **arguments):
    arguments.setdefault('use_sim_time', 'false')
    _, (driver,) = launch_nodes(start_node, tmp_path, DRIVER_LAUNCH, **arguments)
    return driver


@pytest.fixture
def bridge(rclpy_context):
    fake = FakeBridge(rclpy_context)
    yield fake
    fake.close()


def test_one_command_per_frame_with_safety_stops(start_node, tmp_path, bridge):
    driver = start_driver(start_node, tmp_path, allow_random_policy='true')
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    bridge.publish_route()
    assert driver.wait_for_output('random policy'), driver.output()
    assert bridge.warm_up(), driver.output()

    # Lock-step: each 800x600 bgra8 frame gets exactly one command carrying its stamp.
    for sec in range(1, 16):
        commands = bridge.send_frame_and_wait(sec)
        assert len(commands) == 1, (sec, driver.output())
        assert_in_range(commands[0])
        assert not commands[0].brake == 1.0, 'random policy should drive, not stop'
    assert bridge.spin_until(lambda: False, timeout=0.3) is False
    assert all(len(bridge.commands_for(sec)) == 1 for sec in range(1, 16))

    # Malformed frames: brake for that frame, log why, keep running.
    bad_frames = {
        100: bridge.image_msg(100, bgra_frame(0), encoding='yuv422'),
        101: bridge.image_msg(101, b'\x00' * 1000),
        102: bridge.image_msg(102, b'', height=0, width=0),
        103: bridge.image_msg(103, bgra_frame(0), step=100),
    }
    for sec, msg in bad_frames.items():
        (command,) = bridge.send_frame_and_wait(sec, msg)
        assert (command.throttle, command.brake) == (0.0, 1.0)
    assert 'bad camera frame' in driver.output()
    assert 'unsupported encoding' in driver.output()
    (command,) = bridge.send_frame_and_wait(104)
    assert command.brake < 1.0, 'a good frame after bad ones drives again'

    # Stalled camera: full brake within frame_timeout (0.5 s) plus one check period.
    bridge.commands.clear()
    assert bridge.spin_until(lambda: len(bridge.commands) >= 3, timeout=3.0)
    assert all(c.brake == 1.0 and c.throttle == 0.0 for c in bridge.commands)
    assert driver.wait_for_output('no camera frame for')
    (command,) = bridge.send_frame_and_wait(105)
    assert command.brake < 1.0
    assert driver.wait_for_output('camera frames are back')
    assert driver.proc.poll() is None


def test_refuses_to_drive_without_checkpoint(start_node, tmp_path, bridge):
    driver = start_driver(start_node, tmp_path)
    assert bridge.wait_for_subscriber(bridge.image_pub)
    bridge.publish_route()
    assert bridge.warm_up(until_driving=False)
    for sec in range(1, 4):
        (command,) = bridge.send_frame_and_wait(sec)
        assert (command.steer, command.throttle, command.brake) == (0.0, 0.0, 1.0)
    assert 'refusing to drive' in driver.output()


def _write_policy(path, network=NetworkConfig(), poison=False):
    torch.manual_seed(3)
    policy = ActorPolicy(network)
    if poison:
        with torch.no_grad():
            policy.actor.fc3.bias.fill_(float('nan'))
    save_policy(path, policy, PolicySpec(network=network))
    return policy


@pytest.mark.parametrize('case', ['mismatch', 'nan', 'missing'])
def test_bad_checkpoint_brakes_and_says_why(start_node, tmp_path, bridge, case):
    checkpoint = tmp_path / 'policy.safetensors'
    if case == 'mismatch':
        _write_policy(checkpoint, NetworkConfig(activation='relu'))
        expected = 'network.activation'
    elif case == 'nan':
        _write_policy(checkpoint, poison=True)
        expected = 'non-finite'
    else:
        expected = 'not found'
    driver = start_driver(start_node, tmp_path, checkpoint=str(checkpoint))
    assert bridge.wait_for_subscriber(bridge.image_pub)
    bridge.publish_route()
    assert bridge.warm_up(until_driving=False)
    (command,) = bridge.send_frame_and_wait(1)
    assert command.brake == 1.0
    assert driver.wait_for_output(expected), driver.output()
    assert driver.proc.poll() is None


def test_checkpoint_drives_like_the_offline_policy(start_node, tmp_path, bridge):
    checkpoint = tmp_path / 'policy.safetensors'
    policy = _write_policy(checkpoint)
    driver = start_driver(start_node, tmp_path, checkpoint=str(checkpoint), device='cpu')
    assert bridge.wait_for_subscriber(bridge.image_pub)
    bridge.publish_route()
    assert driver.wait_for_output('loaded policy.safetensors'), driver.output()
    assert bridge.warm_up()
    # Start a new episode so the driver's frame stack holds only the frame compared below.
    from std_msgs.msg import Header
    bridge.episode_pub.publish(Header(frame_id='7'))
    assert driver.wait_for_output('episode 7 starts'), driver.output()
    (command,) = bridge.send_frame_and_wait(1)

    # Same frame through the core pipeline in this process gives the same command.
    from av_td3_ros.features import Pose2D
    from av_td3_ros.inference import PolicyRunner
    from av_td3_ros.pipeline import DrivingPipeline
    from av_td3_ros.preprocessing import ImageView
    pipeline = DrivingPipeline(PolicySpec(), PolicyRunner(policy, torch.device('cpu')))
    route = np.stack([np.arange(100) * 2.0, np.zeros(100)], axis=1)
    expected = pipeline.step(ImageView('bgra8', 600, 800, 3200, bgra_frame(1).tobytes()),
                             Pose2D(0.0, 0.0, 0.0), 5.0, route).command
    assert command.steer == pytest.approx(expected.steer, abs=1e-5)
    assert command.throttle == pytest.approx(expected.throttle, abs=1e-5)
    assert command.brake == pytest.approx(expected.brake, abs=1e-5)
