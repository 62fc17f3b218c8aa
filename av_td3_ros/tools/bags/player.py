"""Publish a bag's raw CDR messages into the live ROS graph (the node part of bag_replay).

Nothing is deserialised: each message goes out as `publisher.publish(bytes(raw))` on a
publisher of the bag's message class. Timing follows the bag scaled by `rate`, unless
`as_fast_as_consumed`: then each camera frame is sent only after the previous one was answered
by a control command carrying its stamp (the driver's contract), and only once the driver has
handled the messages before it (see `Replay._settle`). That makes a replay through a live
driver repeatable: its keep-last-1 camera subscription drops no frame. An unanswered frame is
re-sent, with the newest odometry again (the driver measures odometry age on its wall clock);
the bag's own commands are not replayed then. At the end the player waits until reliable
subscribers acknowledged every message.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader

from av_td3_ros.tools.bags.qos import publisher_qos
from av_td3_ros.tools.bags.record import IGNORED_TOPICS
from av_td3_ros.tools.bags.types import header_stamp_ns, message_class

SYNC_AUTO = 'auto'  # sync_node: find the consumer by its camera subscription
UNKNOWN_NODE = '_NODE_NAME_UNKNOWN_'  # rclpy's name for an endpoint of a node not known yet


class SyncNodeError(RuntimeError):
    """The node to synchronise with cannot be found or chosen (the message says why)."""


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay and how."""

    bag: Path
    rate: float = 1.0
    topics: tuple[str, ...] = ()  # only these (empty: all)
    exclude: tuple[str, ...] = ()
    clock: bool = False
    latched: tuple[str, ...] = ()
    as_fast_as_consumed: bool = False
    camera_topic: str = '/carla/ego_vehicle/rgb_front/image'
    control_topic: str = '/carla/ego_vehicle/vehicle_control_cmd'
    consume_timeout: float = 2.0  # seconds to wait for a frame's command before re-sending
    retries: int = 3  # re-sends of an unanswered frame before giving up on it
    wait_for: tuple[str, ...] = ()  # topics that must have a subscriber before playing
    wait_timeout: float = 30.0
    delay: float = 0.0  # extra seconds after the subscribers appeared
    settle: float = 0.01  # without a barrier: seconds between a frame's predecessors and it
    refresh: tuple[str, ...] = ()  # topics whose newest message goes again with a re-sent frame
    sync_node: str = ''
    """The consumer ('/ns/name') whose parameter service is the barrier before each frame;
    SYNC_AUTO: the node subscribed to the camera topic; '': no barrier, `settle` pauses."""
    drain_timeout: float = 10.0
    """Seconds to wait at the end for reliable subscribers to acknowledge every message
    (a writer that is destroyed first takes the undelivered ones with it)."""


@dataclass
class ReplayStats:
    """What a replay did (for the caller and the final log line)."""

    published: int = 0
    frames: int = 0
    answered: int = 0
    resent: int = 0
    unanswered: list[int] = field(default_factory=list)  # stamps (ns) never answered
    unacknowledged: list[str] = field(default_factory=list)  # topics not acked at the end


class BagPlayer(Node):
    """Own the publishers of a replay and, when consuming, the control subscription."""

    def __init__(self, config: ReplayConfig, connections):
        """Create one publisher per replayed topic (and /clock, control as configured)."""
        super().__init__('bag_player')
        self.config = config
        self.publishers_by_topic = {}
        for connection in connections:
            if connection.topic in self.publishers_by_topic:
                continue
            cls = message_class(connection.msgtype)
            qos = publisher_qos(getattr(connection.ext, 'offered_qos_profiles', []),
                                latched=connection.topic in config.latched)
            self.publishers_by_topic[connection.topic] = self.create_publisher(
                cls, connection.topic, qos)
        self.clock_pub = None
        if config.clock:
            from rosgraph_msgs.msg import Clock
            self.clock_pub = self.create_publisher(Clock, '/clock', 10)
            self._clock_msg = Clock()
        self.answers: dict[int, int] = {}
        self.barrier = None
        self.sync_node = ''  # the node whose parameter service is the barrier
        self.control_sub = None
        if config.as_fast_as_consumed:
            from carla_msgs.msg import CarlaEgoVehicleControl
            self.control_sub = self.create_subscription(
                CarlaEgoVehicleControl, config.control_topic, self._on_control,
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE), raw=True)

    def connect_barrier(self, node_name: str):
        """Use `node_name`'s get_parameters service as the barrier before frames."""
        from rcl_interfaces.srv import GetParameters
        self.sync_node = node_name
        self.barrier = self.create_client(GetParameters, f'{node_name}/get_parameters')

    def camera_consumers(self) -> tuple[list[str], int]:
        """Return the other nodes subscribed to the camera, and how many are unnamed yet.

        DDS announces an endpoint before the graph knows the node that owns it.
        """
        own = self.get_fully_qualified_name()
        infos = self.get_subscriptions_info_by_topic(self.config.camera_topic)
        unnamed = sum(UNKNOWN_NODE in info.node_name for info in infos)
        return sorted({_full_name(info.node_namespace, info.node_name) for info in infos
                       if UNKNOWN_NODE not in info.node_name} - {own}), unnamed

    def control_publishers(self) -> set[str]:
        """Return the full names of the nodes publishing on the control topic."""
        return {_full_name(info.node_namespace, info.node_name)
                for info in self.get_publishers_info_by_topic(self.config.control_topic)}

    def _on_control(self, raw: bytes):
        stamp = header_stamp_ns(raw)
        self.answers[stamp] = self.answers.get(stamp, 0) + 1

    def publish_clock(self, t_ns: int):
        """Publish bag time `t_ns` on /clock."""
        self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(t_ns, 1_000_000_000)
        self.clock_pub.publish(self._clock_msg)


class Replay:
    """Play one bag through a BagPlayer node."""

    def __init__(self, config: ReplayConfig, context=None):
        """Open the bag and create the player node in `context`."""
        self.config = config
        self.reader = Reader(config.bag)
        self.reader.open()
        skip = set(config.exclude) | set(IGNORED_TOPICS)
        if config.clock:
            skip.add('/clock')
        if config.as_fast_as_consumed:
            skip.add(config.control_topic)
        self.connections = [c for c in self.reader.connections
                            if (not config.topics or c.topic in config.topics)
                            and c.topic not in skip]
        self.node = BagPlayer(config, self.connections)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.stats = ReplayStats()

    def close(self):
        """Destroy the node and close the bag."""
        self.executor.remove_node(self.node)
        self.node.destroy_node()
        self.executor.shutdown()
        self.reader.close()

    def _spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                return False
            self.executor.spin_once(timeout_sec=min(remaining, 0.01))
        return True

    def _wait_for_graph(self):
        node = self.node
        publishers = dict(node.publishers_by_topic)
        if node.clock_pub is not None:
            publishers['/clock'] = node.clock_pub
        topics = [t for t in self.config.wait_for if t in publishers]
        checks = [lambda p=publishers[t]: p.get_subscription_count() > 0 for t in topics]
        if node.control_sub is not None:
            checks.append(lambda: node.count_publishers(self.config.control_topic) > 0)
        if not self._spin_until(lambda: all(c() for c in checks), self.config.wait_timeout):
            missing = [t for t in topics if publishers[t].get_subscription_count() == 0]
            raise TimeoutError(f'no subscriber on {missing} (or no publisher on '
                               f'{self.config.control_topic}) after '
                               f'{self.config.wait_timeout} s')
        self.synced = False
        if self.config.as_fast_as_consumed and self.config.sync_node:
            self._connect_sync_node()
        if self.config.delay > 0.0:
            self._spin_until(lambda: False, self.config.delay)

    def _connect_sync_node(self):
        """Find the node to synchronise with (or take the named one) and wait for it.

        Raise SyncNodeError when there is none or no single one: without its barrier a replay
        would silently feed frames before their odometry and route were handled.
        """
        node, config = self.node, self.config
        name = config.sync_node
        if name == SYNC_AUTO:
            def all_named():
                named, unnamed = node.camera_consumers()
                return bool(named) and unnamed == 0
            self._spin_until(all_named, config.wait_timeout)
            candidates, _ = node.camera_consumers()
            if len(candidates) > 1:  # prefer the one(s) that also answer with commands
                answering = [c for c in candidates if c in node.control_publishers()]
                candidates = answering or candidates
            if len(candidates) != 1:
                found = (f'nodes {", ".join(candidates)} subscribe to it' if candidates
                         else 'no node subscribes to it')
                raise SyncNodeError(
                    f'cannot find the driver by its subscription to {config.camera_topic} '
                    f'after {config.wait_timeout} s: {found}. Pass --sync-node /ns/name (the '
                    'driver), or --sync-node "" to pause --settle seconds before each frame '
                    'instead')
            name = candidates[0]
        node.connect_barrier(name)
        self.synced = self._spin_until(node.barrier.service_is_ready, config.wait_timeout)
        if not self.synced:
            consumers, _ = node.camera_consumers()
            raise SyncNodeError(
                f'no node {name} answered within {config.wait_timeout} s (nodes subscribed '
                f'to {config.camera_topic}: {", ".join(consumers) or "none"}). Pass '
                '--sync-node with the driver\'s full name, or --sync-node "" to use --settle')
        node.get_logger().info(f'synchronising with {name}')

    def _publish(self, topic: str, raw) -> None:
        publisher = self.node.publishers_by_topic[topic]
        data = bytes(raw)
        for attempt in range(3):
            try:
                publisher.publish(data)
                self.stats.published += 1
                return
            except Exception:  # rclpy raises RCLError when DDS is saturated
                if attempt == 2:
                    raise
                self.executor.spin_once(timeout_sec=0.01)

    def play(self) -> ReplayStats:
        """Publish every selected message; return what happened."""
        self._wait_for_graph()
        consume = self.config.as_fast_as_consumed
        start_wall, start_bag = None, None
        since_frame = {}  # topic -> messages published since the last camera frame
        latest = {}  # topic -> newest raw message, for refreshing before a re-sent frame
        for connection, t_ns, raw in self.reader.messages(connections=self.connections):
            topic = connection.topic
            if not consume:
                if start_wall is None:
                    start_wall, start_bag = time.monotonic(), t_ns
                due = start_wall + (t_ns - start_bag) / 1e9 / self.config.rate
                self._spin_until(lambda d=due: time.monotonic() >= d, float('inf'))
            if self.node.clock_pub is not None:
                self.node.publish_clock(t_ns)
            if consume and topic == self.config.camera_topic:
                self._play_frame(raw, since_frame, latest)
                since_frame = {}
                continue
            self._publish(topic, raw)
            since_frame[topic] = since_frame.get(topic, 0) + 1
            if topic in self.config.refresh:
                latest[topic] = raw
        self._drain()
        return self.stats

    def _drain(self):
        """Wait until reliable subscribers acknowledged all messages, or drain_timeout.

        Exiting right after the last publish lost the bag's last messages on loaded machines.
        """
        deadline = time.monotonic() + self.config.drain_timeout
        for topic, publisher in self.node.publishers_by_topic.items():
            remaining = max(0.0, deadline - time.monotonic())
            if not publisher.wait_for_all_acked(Duration(seconds=remaining)):
                self.stats.unacknowledged.append(topic)
        if self.stats.unacknowledged:
            self.node.get_logger().warn(
                f'not acknowledged after {self.config.drain_timeout} s: '
                f'{self.stats.unacknowledged} (a subscriber may have missed the last messages)')

    def _settle(self, since_frame: dict):
        """Return once the consumer has run the callbacks of the messages sent since a frame.

        Its executor runs the camera callback before others ready at the same time, so a frame
        must not arrive while they wait. Acknowledgements cannot tell (they wait for the
        writer's heartbeat, ~3 s); a parameter service call can: rclpy serves services after
        the subscriptions ready in the same wait, one message per subscription per wait, so one
        answered call per message queued on a topic proves all were handled.
        """
        if not since_frame:
            return
        if not self.synced:
            if self.config.settle > 0.0:
                self._spin_until(lambda: False, self.config.settle)
            return
        from rcl_interfaces.srv import GetParameters
        rounds = max((n for t, n in since_frame.items() if t in self._sync_topics()),
                     default=0)
        for _ in range(rounds):
            future = self.node.barrier.call_async(GetParameters.Request(names=[]))
            if not self._spin_until(future.done, self.config.consume_timeout):
                self.node.get_logger().warn(f'{self.node.sync_node} did not answer a '
                                            'parameter request: sending the frame anyway')
                return

    def _sync_topics(self):
        """Return the topics the sync node subscribes to (all replayed ones if unknown)."""
        namespace, _, name = self.node.sync_node.rpartition('/')
        try:
            return {topic for topic, _ in self.node.get_subscriber_names_and_types_by_node(
                name, namespace or '/')}
        except Exception:  # the graph may not list the node yet: barrier for every topic
            return set(self.node.publishers_by_topic)

    def _play_frame(self, raw, since_frame: dict, latest: dict):
        self._settle(since_frame)
        stamp = header_stamp_ns(raw)
        self.stats.frames += 1
        answers = self.node.answers
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.stats.resent += 1
                self.node.get_logger().warn(f'no command for frame {stamp} after '
                                            f'{self.config.consume_timeout} s: sending again')
                # The driver judges odometry age on its wall clock: refresh it.
                for topic, value in latest.items():
                    self._publish(topic, value)
                self._settle(dict.fromkeys(latest, 1))
            self._publish(self.config.camera_topic, raw)
            if self._spin_until(lambda: stamp in answers, self.config.consume_timeout):
                self.stats.answered += 1
                return
        self.stats.unanswered.append(stamp)
        self.node.get_logger().error(f'frame {stamp} was never answered')


def _full_name(namespace: str, name: str) -> str:
    """Return '/ns/name' ('/name' in the root namespace)."""
    return f'{namespace.rstrip("/")}/{name}'


def replay(config: ReplayConfig, context=None) -> ReplayStats:
    """Play a bag with `config`; return the statistics."""
    player = Replay(config, context)
    try:
        return player.play()
    finally:
        player.close()
