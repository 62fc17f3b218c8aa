"""Policies over DDS: the trainer publishes each new policy, drivers anywhere load it.

Topic (default `/av_td3/policy`): std_msgs/UInt8MultiArray, `data` = the policy file's bytes
(safetensors), `layout.dim[0].label` = `av_td3_policy step=<updates>`; latched, so a driver
that starts later, or on another machine, gets the newest policy at once. A driver stores each
one as a file (`PolicyInbox`) and loads it like a hot-reloaded checkpoint, between two frames.
`publish_policy <file> [--topic T]` publishes one file and keeps it available until Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from std_msgs.msg import MultiArrayDimension, UInt8MultiArray

from av_td3_ros.nodes.node_main import guard_callback, run_node
from av_td3_ros.nodes.transport import LATCHED
from av_td3_ros.policy.checkpoint import CheckpointError, read_metadata
from av_td3_ros.policy.transfer import (
    PolicyInbox,
    PolicyTransferError,
    policy_label,
    step_from_label,
)

DEFAULT_TOPIC = '/av_td3/policy'
POLICY_QOS = LATCHED


def policy_message(data: bytes, step: int) -> UInt8MultiArray:
    """Build the message carrying one policy file's bytes."""
    msg = UInt8MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=policy_label(step), size=len(data),
                                          stride=len(data))]
    msg.data = data  # bytes: rclpy copies them without a Python-level loop
    return msg


def read_policy_message(msg: UInt8MultiArray) -> tuple[int, bytes]:
    """Return (step, file bytes) of a policy message; raise PolicyTransferError if malformed."""
    if len(msg.layout.dim) != 1:
        raise PolicyTransferError(f'expected one layout dimension, got {len(msg.layout.dim)}')
    step = step_from_label(msg.layout.dim[0].label)
    data = bytes(msg.data)
    if msg.layout.dim[0].size != len(data):
        raise PolicyTransferError(f'layout says {msg.layout.dim[0].size} bytes, message has '
                                  f'{len(data)}')
    return step, data


class PolicyBroadcaster:
    """Publish policy files on the policy topic (the trainer's side)."""

    def __init__(self, node: Node, topic: str = DEFAULT_TOPIC):
        """Create the latched publisher on `topic`."""
        self.node = node
        self.topic = topic
        self.publisher = node.create_publisher(UInt8MultiArray, topic, POLICY_QOS)

    def publish_file(self, path: str | Path, step: int) -> bool:
        """Publish the file at `path` as the policy after `step` updates; False on failure.

        Once the node's context is shut down (Ctrl-C during a save) nobody can hear it: that
        is no error, and the checkpoint file stays on disk for the next start.
        """
        if not self.node.context.ok():
            return False
        try:
            data = Path(path).read_bytes()
            self.publisher.publish(policy_message(data, step))
        except Exception as error:  # RCLError on a failed publish; never end the trainer
            self.node.get_logger().error(f'could not publish policy {path} on {self.topic}: '
                                         f'{error}')
            return False
        return True


class PolicyReceiver:
    """Receive policies on the policy topic and hand each new one to a loader (the driver)."""

    def __init__(self, node: Node, topic: str, load: Callable[[Path], None]):
        """Subscribe to `topic`; call `load(path)` on a worker thread for each new policy.

        Only the newest waiting policy is loaded: one that arrives while another loads
        replaces any not yet started.
        """
        self.node = node
        self.topic = topic
        self.load = load
        self._directory = tempfile.TemporaryDirectory(prefix='av_td3_received_policies_')
        self.inbox = PolicyInbox(self._directory.name, keep=3)
        self._newest: Path | None = None
        self._wake = threading.Condition()
        self._worker = threading.Thread(target=self._work, daemon=True,
                                        name='policy_receiver')
        self._worker.start()
        node.create_subscription(
            UInt8MultiArray, topic, guard_callback(node, self.on_message), POLICY_QOS)

    def on_message(self, msg: UInt8MultiArray):
        """Store a received policy and wake the loader; log and drop malformed messages."""
        try:
            step, data = read_policy_message(msg)
            path = self.inbox.store(step, data)
        except (PolicyTransferError, OSError) as error:
            self.node.get_logger().error(f'ignoring a message on {self.topic}: {error}')
            return
        if path is None:
            return
        self.node.get_logger().info(f'received policy step {step} ({len(data)} bytes) on '
                                    f'{self.topic}')
        with self._wake:
            self._newest = path
            self._wake.notify()

    def _work(self):
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._newest is not None)
                path, self._newest = self._newest, None
            try:
                self.load(path)
            except Exception as error:  # a loader bug must not end the driver
                self.node.get_logger().error(f'loading received policy {path.name} failed: '
                                             f'{error!r}')


class PolicyPublisherNode(Node):
    """Publish one policy file on the policy topic and keep it latched."""

    def __init__(self, path: Path, topic: str, step: int | None):
        """Read `path`'s step (unless given) and publish it once."""
        super().__init__('policy_publisher')
        if step is None:
            step = int(read_metadata(path).get('step', '0') or 0)
        self.broadcaster = PolicyBroadcaster(self, topic)
        if not self.broadcaster.publish_file(path, step):
            raise SystemExit(1)
        self.get_logger().info(f'published {path} (step {step}, {path.stat().st_size} bytes) '
                               f'on {topic}; Ctrl-C to stop')


def main(argv=None) -> int:
    """Run `publish_policy <file> [--topic T] [--step N] [--ros-args ...]`."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('policy', type=Path, help='policy .safetensors file')
    parser.add_argument('--topic', default=DEFAULT_TOPIC)
    parser.add_argument('--step', type=int, default=None,
                        help="step label (default: the file's 'step' metadata, else 0)")
    full = sys.argv if argv is None else ['publish_policy', *argv]
    args = parser.parse_args(remove_ros_args(full)[1:])
    try:
        read_metadata(args.policy)  # refuse a non-safetensors file before any ROS set-up
    except CheckpointError as error:
        parser.error(str(error))
    run_node(lambda: PolicyPublisherNode(args.policy, args.topic, args.step), full)
    return 0


if __name__ == '__main__':
    main()
