# Test policies over DDS: a trainer process publishes, a driver process in another process
# loads them through the checkpoint file validation (spec match, no pickle), swapping atomically.
import pickle
import re
from dataclasses import replace

import pytest
import torch
from helpers import REPO_LAUNCH, launch_nodes, trainer_params
from ros_helpers import FakeBridge
from std_msgs.msg import UInt8MultiArray

from av_td3_ros.nodes.policy_topic import POLICY_QOS, policy_message, read_policy_message
from av_td3_ros.policy.checkpoint import (
    PolicySpec,
    latest_policy,
    load_policy,
    read_metadata,
    save_policy,
)
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.policy.transfer import (
    MAX_POLICY_BYTES,
    PolicyInbox,
    PolicyTransferError,
    policy_label,
    step_from_label,
)

TOPIC = '/test/av_td3/policy'


# --- the pure part --------------------------------------------------------------------------

def test_label_round_trip_and_refusals():
    assert step_from_label(policy_label(1234)) == 1234
    for bad in ('', 'av_td3_policy step=', 'av_td3_policy step=-1', 'policy step=3',
                'av_td3_policy step=3 ', 'av_td3_policy step=3/../../x', 'x' * 1000):
        with pytest.raises(PolicyTransferError):
            step_from_label(bad)
    with pytest.raises(PolicyTransferError):
        policy_label(-1)


def test_inbox_writes_whole_files_skips_repeats_and_keeps_the_newest(tmp_path):
    inbox = PolicyInbox(tmp_path / 'inbox', keep=2)
    first = inbox.store(10, b'first policy')
    assert first.read_bytes() == b'first policy'
    assert inbox.store(10, b'first policy') is None  # a re-delivery
    second = inbox.store(0, b'restarted trainer')      # a lower step is still the newest
    third = inbox.store(20, b'third')
    assert sorted(p.name for p in (tmp_path / 'inbox').iterdir()) == sorted(
        [second.name, third.name])
    assert second.name < third.name
    with pytest.raises(PolicyTransferError, match='empty'):
        inbox.store(1, b'')


def test_inbox_refuses_oversized_messages(tmp_path):
    class Huge(bytes):
        def __len__(self):
            return MAX_POLICY_BYTES + 1

    with pytest.raises(PolicyTransferError, match='exceeds'):
        PolicyInbox(tmp_path).store(1, Huge(b'x'))


def test_message_round_trip_and_size_check():
    msg = policy_message(b'\x00\x01\x02', 7)
    assert read_policy_message(msg) == (7, b'\x00\x01\x02')
    msg.layout.dim[0].size = 4
    with pytest.raises(PolicyTransferError, match='layout says 4'):
        read_policy_message(msg)
    with pytest.raises(PolicyTransferError, match='one layout dimension'):
        read_policy_message(UInt8MultiArray(data=b'x'))


# --- trainer process -> driver process --------------------------------------------------------

def loaded_steps(driver):
    return [int(step) for step in
            re.findall(r'loaded received_\d+_step_(\d+)\.safetensors', driver.output())]


@pytest.mark.slow
def test_trainer_policies_reach_a_driver_over_dds(start_node, start_tool, tmp_path,
                                                  rclpy_context):
    run_dir = tmp_path / 'run'
    trainer = start_node('av_td3_ros.nodes.trainer', '--params-file',
                         str(trainer_params(tmp_path, buffer_capacity=200, tensorboard=False,
                                            policy_topic=TOPIC)),
                         '-p', f'run_dir:={run_dir}',
                         '-p', 'device:=cpu', '-p', 'use_sim_time:=false', name='trainer')
    # The trainer writes (and so publishes) its initial policy as step 0 when it starts; the
    # driver starts after that and still gets it (transient local), with no checkpoint path.
    assert trainer.wait_for_output('training from ego_vehicle', timeout=90), trainer.output()
    _, (driver,) = launch_nodes(start_node, tmp_path, REPO_LAUNCH / 'driver.launch.xml',
                                policy_topic=TOPIC, use_sim_time='false', device='cpu')
    bridge = FakeBridge(rclpy_context)
    try:
        assert driver.wait_for_output('loaded received_', timeout=90), (
            driver.output(), trainer.output())
        assert loaded_steps(driver) == [0]
        assert bridge.wait_for_subscriber(bridge.image_pub), driver.output()
        bridge.publish_route()
        assert bridge.warm_up(), driver.output()  # it drives with the received policy

        # A policy with another architecture is refused, naming the field; the driver keeps
        # the one it has and keeps driving.
        other = tmp_path / 'relu.safetensors'
        spec = PolicySpec.from_metadata(read_metadata(latest_policy(run_dir / 'checkpoints')))
        relu = replace(spec, network=replace(spec.network, activation='relu'))
        save_policy(other, ActorPolicy(relu.network), relu, {'step': '77'})
        publisher = start_tool('av_td3_ros.nodes.policy_topic', str(other), '--topic', TOPIC)
        assert publisher.wait_for_output('published', timeout=60), publisher.output()
        assert driver.wait_for_output("activation: driver 'leaky_relu' != checkpoint 'relu'",
                                      timeout=60), driver.output()
        assert bridge.warm_up(first_sec=2000), driver.output()
        publisher.interrupt()

        # Bytes that are no safetensors file - here a pickle that would leave a marker if it
        # were ever unpickled - are refused; nothing runs.
        marker = tmp_path / 'unpickled'

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), 'w'))

        evil = bridge.node.create_publisher(UInt8MultiArray, TOPIC, POLICY_QOS)
        evil.publish(policy_message(pickle.dumps(Payload()), 99))
        assert driver.wait_for_output('cannot read checkpoint', timeout=60), driver.output()
        assert not marker.exists()
        assert loaded_steps(driver) == [0]

        # A good policy (what the trainer's next checkpoint would be) is swapped in.
        good = tmp_path / 'good.safetensors'
        torch.manual_seed(5)
        save_policy(good, ActorPolicy(spec.network), spec, {'step': '123'})
        load_policy(good, spec)  # the test's own file is valid for the driver's spec
        publisher = start_tool('av_td3_ros.nodes.policy_topic', str(good), '--topic', TOPIC)
        assert driver.wait_for_output('received policy step 123', timeout=60), driver.output()
        # It is swapped in between two frames: feed frames until it is.
        for sec in range(3000, 3200):
            bridge.send_frame_and_wait(sec, timeout=2.0)
            if 123 in loaded_steps(driver):
                break
        assert loaded_steps(driver) == [0, 123], driver.output()
        assert bridge.warm_up(first_sec=4000), driver.output()
        assert driver.proc.poll() is None and trainer.proc.poll() is None
    finally:
        bridge.close()
