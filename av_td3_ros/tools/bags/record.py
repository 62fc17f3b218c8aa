"""Record topics from the live ROS graph into a rosbag2 bag (mcap or sqlite3).

    bag_record -o run1 [--storage mcap|sqlite3] [--role ego_vehicle] [--topics T ...]
               [--all] [--duration S] [--max-messages N] [--ros-args ...]

Subscriptions are raw: the CDR bytes DDS delivers go into the bag as they are. Topics are
subscribed as their publishers appear (their type comes from the graph). The bag time is the
receive time on the node's clock (`--ros-args -p use_sim_time:=true` for /clock). The bag is
always closed, so metadata.yaml is written, also after SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args
from rosbags.rosbag2 import Writer

from av_td3_ros.tools.bags import STORAGES
from av_td3_ros.tools.bags.qos import subscription_qos, to_bag_qos
from av_td3_ros.tools.bags.types import UnknownTypeError, ensure_type, message_class, typestore

IGNORED_TOPICS = ('/rosout', '/parameter_events')  # every graph has them; not about a drive
DRAIN_IDLE_ROUNDS = 3  # after a stop, spin until this many 0.1 s spins bring no message...
DRAIN_LIMIT_S = 10.0  # ...but no longer (a publisher that never stops must not hold the exit)


def default_topics(role: str = 'ego_vehicle', camera: str = 'rgb_front') -> list[str]:
    """Return the topics of a driving run: bridge sensors, route, command, events, time."""
    base = f'/carla/{role}'
    return [f'{base}/{camera}/image', f'{base}/odometry', f'{base}/waypoints',
            f'{base}/vehicle_control_cmd', f'{base}/collision', f'{base}/lane_invasion',
            '/carla/status', '/clock', f'/av_td3/{role}/episode_start',
            f'/av_td3/{role}/episode_end']


def default_latched(role: str = 'ego_vehicle') -> list[str]:
    """Return topics the CARLA bridge latches (TRANSIENT_LOCAL)."""
    return [f'/carla/{role}/waypoints', f'/carla/{role}/vehicle_info',
            f'/carla/{role}/vehicle_control_manual_override']


@dataclass(frozen=True)
class RecordConfig:
    """What to record, where, and when to stop."""

    output: Path
    storage: str = 'mcap'
    topics: tuple[str, ...] = ()
    record_all: bool = False
    latched: tuple[str, ...] = ()
    duration: float = 0.0  # seconds (0: until SIGINT)
    max_messages: int = 0  # messages in all (0: no limit)
    discovery_period: float = 0.2


class BagRecorder(Node):
    """Subscribe raw to the configured topics and write every message to a bag."""

    def __init__(self, config: RecordConfig, writer: Writer):
        """Wire the discovery timer; subscriptions follow as publishers appear."""
        super().__init__('bag_recorder')
        self.config = config
        self.writer = writer
        self.store = typestore()
        self.connections = {}
        self.count = 0
        self.done = False
        self._skipped = set()
        self.create_timer(config.discovery_period, self.discover)
        self.discover()

    def _wanted(self) -> list[str]:
        if not self.config.record_all:
            return list(self.config.topics)
        names = [name for name, _ in self.get_topic_names_and_types()]
        return sorted(set(names) - set(IGNORED_TOPICS))

    def discover(self):
        """Subscribe to every wanted topic that has a publisher and no subscription yet."""
        for topic in self._wanted():
            if topic in self.connections or topic in self._skipped:
                continue
            infos = [i for i in self.get_publishers_info_by_topic(topic)
                     if i.node_name != self.get_name()]
            if infos:
                self._subscribe(topic, infos)

    def _subscribe(self, topic: str, infos):
        types = sorted({i.topic_type for i in infos})
        if len(types) > 1:
            self.get_logger().warn(f'{topic} has publishers of several types {types}; '
                                   f'recording {types[0]}')
        msgtype = types[0]
        try:
            ensure_type(self.store, msgtype)
            cls = message_class(msgtype)
        except UnknownTypeError as error:
            self._skipped.add(topic)
            self.get_logger().error(f'not recording {topic}: {error}')
            return
        digest = self.store.hash_rihs01(msgtype)
        graph_digests = {str(i.topic_type_hash) for i in infos if i.topic_type == msgtype}
        if graph_digests and graph_digests != {digest}:
            # Data and definition would disagree; say so loudly but keep the data.
            self.get_logger().warn(f'{topic}: graph type hash {sorted(graph_digests)} differs '
                                   f'from the definition used for the bag ({digest})')
        offered = [i.qos_profile for i in infos if i.topic_type == msgtype]
        connection = self.writer.add_connection(
            topic, msgtype, typestore=self.store,
            offered_qos_profiles=[to_bag_qos(p) for p in offered])
        qos = subscription_qos(offered, latched=topic in self.config.latched)
        self.connections[topic] = connection
        self.create_subscription(cls, topic, lambda raw, c=connection: self._write(c, raw),
                                 qos, raw=True)
        self.get_logger().info(f'recording {topic} [{msgtype}] {qos.reliability.name.lower()}'
                               f' {qos.durability.name.lower()}')

    def _write(self, connection, raw: bytes):
        if self.done:
            return
        self.writer.write(connection, self.get_clock().now().nanoseconds, raw)
        self.count += 1
        if self.config.max_messages and self.count >= self.config.max_messages:
            self.done = True


def record(config: RecordConfig, context=None, stop=None) -> int:
    """Record until a stop condition or the Event `stop`; return the messages written."""
    writer = Writer(config.output, version=9, storage_plugin=STORAGES[config.storage])
    writer.open()
    node = None
    executor = SingleThreadedExecutor(context=context)
    try:
        node = BagRecorder(config, writer)
        executor.add_node(node)
        start = time.monotonic()
        while not node.done and not (stop is not None and stop.is_set()):
            if config.duration and time.monotonic() - start >= config.duration:
                break
            executor.spin_once(timeout_sec=0.05)
        # Drain what DDS already delivered (e.g. on Ctrl-C) instead of dropping it. A recorder
        # starved of CPU takes a good part of a second for a 2 MB frame: the cap is generous.
        drain_until = time.monotonic() + DRAIN_LIMIT_S
        idle = 0
        while not node.done and idle < DRAIN_IDLE_ROUNDS and time.monotonic() < drain_until:
            count = node.count
            executor.spin_once(timeout_sec=0.1)
            idle = idle + 1 if node.count == count else 0
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        writer.close()  # writes metadata.yaml, also after SIGINT
        count = node.count if node is not None else 0
        if node is not None:
            # print, not the logger: after SIGINT the context (and /rosout) is gone.
            print(f'wrote {count} messages on {len(node.connections)} topics to '
                  f'{config.output}', flush=True)
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    return count


def parse_args(argv: list[str]) -> RecordConfig:
    """Parse the command line (without ROS arguments) into a RecordConfig."""
    parser = argparse.ArgumentParser(prog='bag_record', description=__doc__.split('\n')[0])
    parser.add_argument('-o', '--output', type=Path,
                        help='bag directory to create (default rosbag2_<date>-<time>)')
    parser.add_argument('-s', '--storage', choices=sorted(STORAGES), default='mcap')
    parser.add_argument('--role', default='ego_vehicle', help='CARLA role name')
    parser.add_argument('--camera', default='rgb_front', help='camera sensor id')
    parser.add_argument('-t', '--topics', nargs='+', metavar='TOPIC',
                        help='topics to record (default: camera, odometry, waypoints, '
                             'control command, collision, lane invasion, status, clock, '
                             'episode start/end)')
    parser.add_argument('-a', '--all', action='store_true', help='record every topic')
    parser.add_argument('--latched', nargs='*', metavar='TOPIC',
                        help='topics to subscribe transient-local even if the graph does not '
                             'say so (default: waypoints, vehicle_info, manual override)')
    parser.add_argument('-d', '--duration', type=float, default=0.0,
                        help='stop after this many seconds (default: until Ctrl-C)')
    parser.add_argument('-n', '--max-messages', type=int, default=0,
                        help='stop after this many messages (default: no limit)')
    args = parser.parse_args(argv)
    output = args.output or Path(datetime.now().strftime('rosbag2_%Y_%m_%d-%H_%M_%S'))
    if output.exists():
        parser.error(f'{output} exists already')
    return RecordConfig(
        output=output, storage=args.storage,
        topics=tuple(args.topics or default_topics(args.role, args.camera)),
        record_all=args.all,
        latched=tuple(args.latched if args.latched is not None
                      else default_latched(args.role)),
        duration=args.duration, max_messages=args.max_messages)


def main(args=None):
    """Run the recorder from the command line."""
    argv = sys.argv if args is None else args
    config = parse_args(remove_ros_args(argv)[1:])
    # Handle SIGINT/SIGTERM ourselves: rclpy's handler would shut the context down at once
    # and lose messages that were delivered but not yet written.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        record(config, stop=stop)
    finally:
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
