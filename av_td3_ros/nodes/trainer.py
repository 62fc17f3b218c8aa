"""Trainer node: experience from the ROS graph -> replay buffer -> TD3 updates -> checkpoints.

Per vehicle (role name) it subscribes to the camera, odometry, route, the command the driver
sent (or vehicle_status.control), collision and lane-invasion events and the episode topics,
pairs them into transitions with `TransitionAssembler`, and hands them to the ROS-free
`Learner` (learning/learner.py), which owns the replay buffer, the schedule (BC pretraining,
TD3 updates), checkpoints and the training state. Its updates run in a worker thread, so
camera callbacks are never blocked; every `checkpoint_every` updates a policy file lands
atomically in run_dir/checkpoints, where drivers pick it up (and `policy_topic` carries
it). Episodes the trainer ends (collision, lateral deviation, route completed, step limit)
are reset through /av_td3/<role>/reset_episode.

No message ends the process: every subscription and timer callback is wrapped by
`guard_callback` (an exception is logged, throttled, with the message, and the node goes on);
unusable routes and odometry are refused on arrival and logged. At start-up the temp files of
writers killed mid-write are removed (the replay buffer's lock makes this process the run
directory's only writer), and a policy file name is never rewritten: a trainer resumed from an
older state keeps the `policy_<step>` files a previous run wrote and writes new names only.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import torch
from carla_msgs.msg import (
    CarlaCollisionEvent,
    CarlaEgoVehicleControl,
    CarlaEgoVehicleStatus,
    CarlaLaneInvasionEvent,
)
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from ..driving.control import control_to_action
from ..driving.preprocessing import ImageFormatError, ImageView, to_gray
from ..driving.ros_conversions import (
    command_from_control_msg,
    pose_from_odometry,
    route_from_path,
    speed_from_odometry,
    stamp_to_ns,
)
from ..learning.learner import Learner, ResumeError, resume_differences
from ..learning.transitions import AssemblerOutput, EpisodeEnd, TransitionAssembler
from ..sim.episode_end import parse_episode_end
from .callback_guard import guard_callback
from .node_main import run_node
from .node_params import declare
from .policy_topic import PolicyBroadcaster
from .trainer_config import (
    TRAINER,
    TrainerConfig,
    config_from_values,
    with_initial_policy_decisions,
)

__all__ = ['TRAINER', 'TrainerConfig', 'TrainerNode', 'config_from_values', 'main',
           'read_config', 'resume_differences', 'with_initial_policy_decisions']


def read_config(node: Node) -> TrainerConfig:
    """Declare the trainer's parameters (descriptions, ranges) and read them."""
    return config_from_values(declare(node, TRAINER))



class VehicleFeed:
    """One vehicle's subscriptions, assembler and reset client."""

    def __init__(self, node: TrainerNode, role: str):
        """Subscribe to `role`'s topics."""
        self.node, self.role = node, role
        config = node.config
        self.assembler = TransitionAssembler(config.spec.features, config.reward,
                                             config.episode)
        self.frame_stamps: list[int] = []  # recent frame stamps (vehicle_status pairing)
        self.resetting = False
        self.reset_requested: float | None = None  # monotonic time of the last request
        self.last_frame: float | None = None  # monotonic time of the newest camera frame
        base = f'/carla/{role}'
        # Reliable keep-10 for the camera (2 MB frames): the trainer should see every frame
        # the driver saw. Small messages queue deeper: a trainer busy for a moment must not
        # lose the command of a frame it still has (the frame would go unpaired).
        camera = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)

        def sub(msg_type, topic, callback, qos):
            node.create_subscription(msg_type, topic, guard_callback(node, callback), qos)

        sub(Image, config.camera_topic.replace('{role}', role), self.on_image, camera)
        sub(Odometry, f'{base}/odometry', self.on_odometry, reliable)
        sub(PathMsg, f'{base}/waypoints', self.on_route,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        if config.control_source == 'vehicle_status':
            sub(CarlaEgoVehicleStatus, f'{base}/vehicle_status', self.on_status, reliable)
        else:
            sub(CarlaEgoVehicleControl, f'{base}/vehicle_control_cmd', self.on_command,
                reliable)
        sub(CarlaCollisionEvent, f'{base}/collision', self.on_collision, reliable)
        sub(CarlaLaneInvasionEvent, f'{base}/lane_invasion', self.on_lane_invasion, reliable)
        sub(Header, f'/av_td3/{role}/episode_start', self.on_episode_start, reliable)
        sub(String, f'/av_td3/{role}/episode_end', self.on_episode_end, reliable)
        self.reset_client = node.create_client(Trigger, f'/av_td3/{role}/reset_episode')

    def on_image(self, msg: Image):
        """Preprocess the frame exactly as the driver does (uint8 84x84) and queue it."""
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            frame = to_gray(ImageView.from_msg(msg), self.node.config.spec.preprocessing
                            .image_size)
        except ImageFormatError as error:
            self.node.log_throttled('error', f'bad_frame_{self.role}',
                                    f'{self.role}: bad camera frame dropped: {error}')
            return
        self.frame_stamps.append(stamp)
        del self.frame_stamps[:-32]
        self.last_frame = time.monotonic()
        self.assembler.on_frame(stamp, frame)
        self.store_output()

    def on_odometry(self, msg: Odometry):
        """Feed odometry (pose, speed, yaw rate); an unusable sample is logged and ignored."""
        problem = self.assembler.on_odometry(stamp_to_ns(msg.header.stamp),
                                             pose_from_odometry(msg), speed_from_odometry(msg),
                                             msg.twist.twist.angular.z)
        if problem is not None:
            self.node.log_throttled('warn', f'odometry_{self.role}',
                                    f'{self.role}: odometry ignored: {problem}')

    def on_route(self, msg: PathMsg):
        """Feed a new route; an unusable one counts as no route (frames wait for a good one)."""
        problem = self.assembler.on_route(route_from_path(msg))
        if problem is not None:
            self.node.log_throttled('error', f'route_{self.role}',
                                    f'{self.role}: route of {len(msg.poses)} poses refused '
                                    f'({problem}); no route until a usable one arrives')

    def on_command(self, msg: CarlaEgoVehicleControl):
        """Pair the driver's command with the frame carrying the same stamp."""
        action = control_to_action(command_from_control_msg(msg))
        self._control(stamp_to_ns(msg.header.stamp), action)

    def on_status(self, msg: CarlaEgoVehicleStatus):
        """Pair the applied control with the newest frame older than the status tick."""
        stamp = stamp_to_ns(msg.header.stamp)
        older = [s for s in self.frame_stamps if s < stamp]
        if older:
            self._control(older[-1], control_to_action(command_from_control_msg(msg.control)))

    def _control(self, stamp: int, action):
        problem = self.assembler.on_control(stamp, np.array(action))
        if problem is not None:
            self.node.log_throttled('warn', f'command_{self.role}',
                                    f'{self.role}: command ignored: {problem}')
        self.store_output()

    def on_collision(self, msg: CarlaCollisionEvent):
        """Feed a collision event."""
        self.assembler.on_event(stamp_to_ns(msg.header.stamp), 'collision')

    def on_lane_invasion(self, msg: CarlaLaneInvasionEvent):
        """Feed a lane invasion event."""
        self.assembler.on_event(stamp_to_ns(msg.header.stamp), 'lane_invasion')

    def check_idle(self):
        """Decide steps still waiting for late events once the camera has gone quiet.

        Their window closes with a newer frame; without one (the simulator paused, e.g. after
        a collision) they, and a reset they may ask for, would wait forever.
        """
        quiet = max(1.0, self.node.config.episode.event_window)
        if self.last_frame is not None and time.monotonic() - self.last_frame > quiet:
            self.assembler.decide_pending()
            self.store_output()

    def check_reset(self):
        """Ask again when a requested reset brought no episode_start within reset_timeout."""
        if self.reset_requested is None or not self.assembler.ended:
            return
        waited = time.monotonic() - self.reset_requested
        if waited > self.node.config.reset_timeout:
            self.node.get_logger().warn(f'{self.role}: no episode_start {waited:.1f} s after '
                                        'the reset request; asking again')
            self.request_reset()

    def on_episode_start(self, msg: Header):
        """Begin a new episode at the given stamp."""
        self.resetting = False
        self.reset_requested = None
        self.assembler.on_episode_start(stamp_to_ns(msg.stamp))

    def on_episode_end(self, msg: String):
        """Handle the simulator's 'terminated:<reason>' or 'truncated:<reason>' message."""
        # Only the head (kind and reason) is needed, and reading it cannot fail.
        end = parse_episode_end(msg.data.split(';')[0])
        self.assembler.on_episode_end(end.kind, end.reason)
        self.resetting = True  # the simulator resets by itself
        self.store_output()

    def store_output(self):
        """Write assembled output to the buffer; request a reset after trainer-side ends."""
        for item in self.assembler.pop_output():
            self.node.store(self.role, item)
            if isinstance(item, EpisodeEnd) and item.needs_reset and not self.resetting:
                self.request_reset()

    def request_reset(self):
        """Ask the simulator side to respawn the vehicle (asynchronously)."""
        self.resetting = True
        self.reset_requested = time.monotonic()
        if not self.reset_client.service_is_ready():
            self.node.log_throttled('warn', f'reset_{self.role}',
                                    f'{self.role}: reset service not available; waiting for '
                                    'an episode_start')
            return
        self.reset_client.call_async(Trigger.Request())


class TrainerNode(Node):
    """Learn the driving policy from the ROS graph: feeds -> `Learner` in a worker thread."""

    def __init__(self):
        """Read parameters, open the learner (resuming if asked), wire the topics."""
        super().__init__('trainer')
        self.config = config = with_initial_policy_decisions(read_config(self))
        torch.set_num_threads(config.torch_threads)
        self.policy_broadcaster = (PolicyBroadcaster(self, config.policy_topic)
                                   if config.policy_topic else None)
        broadcast = (self.policy_broadcaster.publish_file  # drivers with policy_topic
                     if self.policy_broadcaster is not None else None)
        try:
            self.learner = Learner(config, self.get_logger(), on_policy_saved=broadcast)
        except ResumeError as error:
            self.get_logger().fatal(str(error))
            raise SystemExit(2) from error
        learner = self.learner
        self.feeds = [VehicleFeed(self, role) for role in config.vehicles]
        self.create_timer(config.log_period, guard_callback(self, self.log_progress))
        self.create_timer(1.0, guard_callback(self, self.check_feeds))
        self._stop = threading.Event()
        self._last_log = time.monotonic()
        if learner.latest_policy() is None:
            # Drivers leaving their random phase before the first update still get a policy
            # (the initial actor, as TD3 would act at learning_starts) instead of braking.
            learner.save_policy()
        self.worker = threading.Thread(target=learner.run_updates, args=(self._stop,),
                                       name='td3_updates', daemon=True)
        self.worker.start()
        self.get_logger().info(
            f'training from {", ".join(config.vehicles)} into {config.run_dir} on '
            f'{learner.agent.device}: buffer {learner.buffer.size}/{learner.buffer.capacity}, '
            f'{learner.updates} updates done, learning starts at '
            f'{config.learning_starts} transitions')

    def check_feeds(self):
        """Once a second: decide steps of quiet cameras, repeat unanswered reset requests."""
        for feed in self.feeds:
            feed.check_idle()
            feed.check_reset()

    def store(self, role: str, item: AssemblerOutput):
        """Hand one assembler output item of vehicle `role` to the learner."""
        self.learner.store(role, item)

    def log_progress(self):
        """Print one progress line (steps, episodes, return, updates/s, drops)."""
        learner = self.learner
        now = time.monotonic()
        rate = learner.take_update_count() / max(now - self._last_log, 1e-9)
        self._last_log = now
        stats = [f.assembler.stats for f in self.feeds]
        frames = sum(s.frames for s in stats)
        unpaired = sum(s.dropped_unpaired for s in stats)
        no_odometry = sum(s.dropped_no_odometry for s in stats)
        stale = sum(s.dropped_stale for s in stats)
        missed = sum(s.missed_frames for s in stats)
        gap_collisions = sum(s.gap_collisions for s in stats)
        refused = sum(s.bad_routes + s.bad_odometry + s.bad_commands for s in stats)
        late = sum(s.late_events for s in stats)
        returns = learner.recent_returns
        mean_return = f'{np.mean(returns):.1f}' if returns else 'n/a'
        self.get_logger().info(
            f'steps {learner.env_steps} | episodes {learner.episodes} | mean return (last 20) '
            f'{mean_return} | updates {learner.updates} ({rate:.1f}/s) | buffer '
            f'{learner.buffer.size} | frames {frames} (no command {unpaired}, no '
            f'odometry/route {no_odometry}, stale {stale}, missed {missed}) | refused '
            f'routes/odometry/commands {refused} | events beyond the window {late} | '
            f'collisions between chains {gap_collisions} | unstored {learner.unstored}')
        if learner.tb is not None:
            learner.tb.add_scalar('train/updates_per_s', rate, learner.updates)
            learner.tb.flush()

    def log_throttled(self, level: str, key: str, text: str, period: float = 2.0):
        """Log at most once per `period` seconds per key."""
        self.learner.log_throttled(level, key, text, period)

    def shutdown(self):
        """Stop updates, store the steps still held back, save the state, close everything."""
        self._stop.set()
        self.worker.join(timeout=30.0)
        for feed in self.feeds:
            for item in feed.assembler.finish():
                self.store(feed.role, item)
        self.learner.close()


def main(args=None):
    """Run the trainer node until shutdown, then save its state."""
    # One executor thread for every callback (they are short; TD3 updates have their own
    # thread). With rclpy's MultiThreadedExecutor and callback groups, a loaded test run saw
    # the feeds stop being served for good while the log timer went on (that executor has
    # known races around mutually exclusive groups); one thread has no such race.
    run_node(TrainerNode, args, before_destroy=TrainerNode.shutdown)


if __name__ == '__main__':
    main()
