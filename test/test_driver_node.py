# Test the driver node over real DDS: one command per frame, safety stops, bad input.
import math

import numpy as np
import pytest
import torch
from helpers import REPO_LAUNCH, bgra_frame, is_full_brake, launch_nodes, shipped_params

from av_td3_ros.policy.checkpoint import PolicySpec, save_policy
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

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
    # The driver answers frames in order on one publisher: once frame 16's command is here,
    # a second command for any earlier frame would have arrived before it.
    assert len(bridge.send_frame_and_wait(16)) == 1, driver.output()
    assert [len(bridge.commands_for(sec)) for sec in range(1, 17)] == [1] * 16

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


def test_a_checkpoint_s_spec_is_taken_where_the_user_set_none(start_node, tmp_path, bridge):
    # A ReLU checkpoint; the driver's activation is left at its default: it drives with ReLU.
    checkpoint = tmp_path / 'policy.safetensors'
    _write_policy(checkpoint, NetworkConfig(activation='relu'))
    driver = start_driver(start_node, tmp_path, checkpoint=str(checkpoint))
    assert bridge.wait_for_subscriber(bridge.image_pub)
    bridge.publish_route()
    assert bridge.warm_up(), driver.output()
    assert 'refus' not in driver.output()


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
    arguments = {}
    if case == 'mismatch':
        # A spec field the user sets is kept, and a checkpoint that differs is refused.
        _write_policy(checkpoint, NetworkConfig(activation='relu'))
        arguments['params_file'] = shipped_params(tmp_path, 'driver', activation='leaky_relu')
        expected = 'network.activation'
    elif case == 'nan':
        _write_policy(checkpoint, poison=True)
        expected = 'non-finite'
    else:
        expected = 'not found'
    driver = start_driver(start_node, tmp_path, checkpoint=str(checkpoint), **arguments)
    assert bridge.wait_for_subscriber(bridge.image_pub)
    bridge.publish_route()
    assert bridge.warm_up(until_driving=False)
    (command,) = bridge.send_frame_and_wait(1)
    assert command.brake == 1.0
    assert driver.wait_for_output(expected), driver.output()
    assert driver.proc.poll() is None


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_checkpoint_drives_like_the_offline_policy(start_node, tmp_path, bridge, backend):
    checkpoint = tmp_path / 'policy.safetensors'
    policy = _write_policy(checkpoint)
    driver = start_driver(start_node, tmp_path, checkpoint=str(checkpoint), device='cpu',
                          backend=backend)
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
    from av_td3_ros.driving.pipeline import DrivingPipeline
    from av_td3_ros.policy.features import Pose2D
    from av_td3_ros.policy.inference import PolicyRunner
    from av_td3_ros.policy.preprocessing import ImageView
    pipeline = DrivingPipeline(PolicySpec(), PolicyRunner(policy, torch.device('cpu')))
    route = np.stack([np.arange(100) * 2.0, np.zeros(100)], axis=1)
    expected = pipeline.step(ImageView('bgra8', 600, 800, 3200, bgra_frame(1).tobytes()),
                             Pose2D(0.0, 0.0, 0.0), 5.0, route).command
    assert command.steer == pytest.approx(expected.steer, abs=1e-5)
    assert command.throttle == pytest.approx(expected.throttle, abs=1e-5)
    assert command.brake == pytest.approx(expected.brake, abs=1e-5)
    assert f'backend {backend}' not in driver.output()  # no fallback warning: it ran


def _driver_process(start_node, *params):
    """Start the driver module directly (ros2 run style: node name /driver) with -p params."""
    args = []
    for param in ('allow_random_policy:=true', 'device:=cpu', 'publish_debug:=false',
                  *params):
        args += ['-p', param]
    return start_node('av_td3_ros.nodes.driver', *args)


def test_watchdog_brakes_on_the_steady_clock_with_sim_time_and_no_clock(start_node, bridge):
    from diagnostic_msgs.msg import DiagnosticArray
    diagnostics = []
    bridge.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    # use_sim_time and nobody publishes /clock: the simulator is dead. Brakes and
    # diagnostics must still come (they stopped with an rclpy timer on the node's clock).
    driver = _driver_process(start_node, 'use_sim_time:=true', 'diagnostics_period:=0.2')
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    bridge.publish_route()
    assert bridge.warm_up(), driver.output()
    bridge.commands.clear()
    diagnostics.clear()

    def watchdog_brakes():  # frames are stamped >= 1000 s; the stopped sim time is 0
        return [c for c in bridge.commands if c.header.stamp.sec < 1000]
    assert bridge.spin_until(lambda: len(watchdog_brakes()) >= 5, timeout=10.0), \
        driver.output()
    assert all(is_full_brake(c) for c in watchdog_brakes())
    assert bridge.spin_until(lambda: len(diagnostics) >= 2, timeout=10.0)
    assert 'camera stalled' in [kv.value for kv in diagnostics[-1].status[0].values]
    assert driver.wait_for_output('no camera frame for'), driver.output()
    (command,) = bridge.send_frame_and_wait(1)
    assert command.brake < 1.0, 'frames again: driving again'
    assert driver.proc.poll() is None


def test_frames_at_a_steady_rate_are_warmed_up_for(start_node, bridge):
    from diagnostic_msgs.msg import DiagnosticArray
    diagnostics = []
    bridge.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    driver = _driver_process(start_node, 'diagnostics_period:=0.2')
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    bridge.publish_route()
    assert bridge.warm_up(), driver.output()
    # Small frames keep the publishing side's timing steady on a busy machine.
    frames = [bgra_frame(k, height=144, width=256) for k in range(4)]
    sent = []

    def send_frame():  # the camera at 20 Hz, as the bridge in synchronous mode
        sec = 2000 + len(sent)
        bridge.publish_odometry()
        bridge.image_pub.publish(bridge.image_msg(sec, frames[sec % len(frames)],
                                                  height=144, width=256))
        sent.append(sec)

    def warm_ups():
        counts = [int(kv.value) for array in diagnostics for kv in array.status[0].values
                  if kv.key == 'warm_ups']
        return max(counts, default=0)

    camera = bridge.node.create_timer(0.05, send_frame)
    try:
        # A warm-up needs 20 intervals within 20 % of their median: one late frame on a
        # loaded machine postpones it by 20 frames, hence the long timeout.
        assert bridge.spin_until(lambda: warm_ups() >= 2, timeout=60.0), driver.output()
    finally:
        camera.cancel()
    answered = [c for c in bridge.commands if c.header.stamp.sec >= 2000]
    assert answered and not is_full_brake(answered[-1])  # still driving
    assert driver.proc.poll() is None


def test_latched_degenerate_route_brakes_a_starting_driver_instead_of_ending_it(
        start_node, bridge):
    # The crash loop of issue 7: a latched route of two identical poses is the first thing a
    # (re)started driver receives.
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    path = PathMsg()
    for _ in range(2):
        pose = PoseStamped()
        pose.pose.position.x = 3.0
        path.poses.append(pose)
    bridge.route_pub.publish(path)
    driver = _driver_process(start_node)
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    assert driver.wait_for_output('route refused'), driver.output()
    for sec in range(1, 4):
        (command,) = bridge.send_frame_and_wait(sec)
        assert is_full_brake(command)
    assert 'fewer than two distinct points' in driver.output()
    bridge.publish_route()  # a usable route: driving
    assert bridge.warm_up(first_sec=100), driver.output()
    assert driver.proc.poll() is None and 'Traceback' not in driver.output()


def test_matched_camera_without_frames_is_reported_with_the_transport_limit(start_node,
                                                                              bridge):
    # A matched publisher whose frames never arrive looks like this one, which sends none:
    # frames larger than the shared-memory segment are dropped without any error.
    driver = _driver_process(start_node, 'diagnostics_period:=0.5')
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    assert driver.wait_for_output('but no frame arrived', timeout=30.0), driver.output()
    assert 'shared-memory segment' in driver.output() and '64 MiB' in driver.output()


@pytest.mark.slow
def test_a_4096x3072_frame_reaches_the_driver(start_node, bridge):
    # The largest camera the README claims: 48 MiB bgra8 frames fit the 64 MiB segment.
    driver = _driver_process(start_node, 'require_route:=false')
    assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
    assert bridge.warm_up(), driver.output()
    height, width = 3072, 4096
    msg = bridge.image_msg(1, bytes(height * width * 4), height=height, width=width)
    commands = []
    for _ in range(3):  # best effort: a re-send is the driver's normal input
        commands = bridge.send_frame_and_wait(1, msg, timeout=10.0)
        if commands:
            break
    assert commands and commands[0].brake < 1.0, driver.output()
    assert 'but no frame arrived' not in driver.output()


def test_exact_float32_is_the_default_and_tf32_a_parameter(start_node, bridge):
    from av_td3_ros.policy.inference import PolicyRunner, float32_precision
    policy = ActorPolicy(NetworkConfig())
    try:
        PolicyRunner(policy, torch.device('cpu'), allow_tf32=True)
        assert float32_precision() == {'matmul_tf32': True, 'cudnn_tf32': True}
        PolicyRunner(policy, torch.device('cpu'))
        assert float32_precision() == {'matmul_tf32': False, 'cudnn_tf32': False}
    finally:
        PolicyRunner(policy, torch.device('cpu'))
    driver = _driver_process(start_node)
    assert driver.wait_for_output('(float32)'), driver.output()
    from rcl_interfaces.srv import GetParameters
    client = bridge.node.create_client(GetParameters, '/driver/get_parameters')
    assert bridge.spin_until(client.service_is_ready, 30.0)
    future = client.call_async(GetParameters.Request(names=['allow_tf32',
                                                            'stop_repeat_period']))
    assert bridge.spin_until(future.done, 10.0)
    allow_tf32, repeat = future.result().values
    assert allow_tf32.bool_value is False and repeat.double_value == 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_gpu_inference_matches_cpu_float32():
    from av_td3_ros.policy.inference import PolicyRunner
    torch.manual_seed(0)
    policy = ActorPolicy(NetworkConfig())
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (4, 84, 84)).astype(np.float32)
    kinematics = rng.uniform(-1, 1, 53).astype(np.float32)
    import copy
    cpu = PolicyRunner(copy.deepcopy(policy), torch.device('cpu')).act(frames, kinematics)
    gpu = PolicyRunner(policy, torch.device('cuda')).act(frames, kinematics)
    assert np.abs(gpu - cpu).max() < 1e-5  # exact float32 (TF32 moved them by ~2.6e-4)
