"""Trainer node: experience from the ROS graph -> replay buffer -> TD3 updates -> checkpoints.

Per vehicle (role name) a `VehicleFeed` subscribes to the camera, odometry, route, the command
the driver sent (or vehicle_status.control), collision and lane-invasion events and the
episode topics, and pairs them into transitions (`TransitionAssembler`). The ROS-free
`Learner` (learning/learner.py) stores them and runs the updates in a worker thread, so
callbacks are never blocked. Episodes the trainer ends (collision, lateral deviation, route
completed, step limit) are reset through /av_td3/<role>/reset_episode. Evaluation episodes
(labelled in episode_start) are scored, with the policy the driver names on
/av_td3/<role>/policy_in_use, instead of stored (learning/evaluations.py).
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
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from av_td3_ros.learning.learner import Learner, ResumeError, resume_differences
from av_td3_ros.learning.message_feed import MessageFeed, input_topics
from av_td3_ros.nodes.callback_guard import guard_callback
from av_td3_ros.nodes.node_main import run_node
from av_td3_ros.nodes.node_params import declare
from av_td3_ros.nodes.policy_topic import PolicyBroadcaster
from av_td3_ros.nodes.trainer_config import (
    TRAINER,
    TrainerConfig,
    config_from_values,
    with_initial_policy_decisions,
)
from av_td3_ros.nodes.transport import LATCHED, reliable
from av_td3_ros.task.episode_label import EpisodeLabel, parse_episode_label
from av_td3_ros.task.transitions import EpisodeEnd, EpisodeStart, TransitionAssembler

__all__ = ['TRAINER', 'TrainerConfig', 'TrainerNode', 'config_from_values', 'main',
           'read_config', 'resume_differences', 'with_initial_policy_decisions']


def read_config(node: Node) -> TrainerConfig:
    """Declare the trainer's parameters (descriptions, ranges) and read them."""
    return config_from_values(declare(node, TRAINER))


def _named_handler(handler, kind: str):
    """Return handler(kind, msg) as a one-argument callback named on_<kind> (for error logs)."""
    def callback(msg):
        handler(kind, msg)
    callback.__name__ = f'on_{kind}'
    return callback


class VehicleFeed:
    """One vehicle's subscriptions, assembler and reset client."""

    def __init__(self, node: TrainerNode, role: str):
        """Subscribe to `role`'s topics."""
        self.node, self.role = node, role
        config = node.config
        self.assembler = TransitionAssembler(config.spec.features, config.reward,
                                             config.episode)
        self.messages = MessageFeed(self.assembler, config.spec.preprocessing.image_size,
                                    config.route_spacing)
        self.resetting = False
        self.episode_label = EpisodeLabel('')  # of the items being popped (training at first)
        self.next_label = EpisodeLabel('')  # of the latest episode_start
        self.policy_in_use: str | None = None  # the driver's checkpoint, by file name
        self.reset_requested: float | None = None  # monotonic time of the last request
        self.last_frame: float | None = None  # monotonic time of the newest camera frame
        # Reliable keep-10 for the camera (2 MB frames): the trainer should see every frame
        # the driver saw. Small messages queue deeper: a trainer busy for a moment must not
        # lose the command of a frame it still has (the frame would go unpaired).
        deep = reliable(100)
        # Odometry, routes and events only feed: their output waits for the next frame.
        inputs = {'camera': (Image, self.on_image, reliable(10)),
                  'odometry': (Odometry, self.feed, deep),
                  'route': (PathMsg, self.feed, LATCHED),
                  'command': (CarlaEgoVehicleControl, self.on_control, deep),
                  'vehicle_status': (CarlaEgoVehicleStatus, self.on_control, deep),
                  'collision': (CarlaCollisionEvent, self.feed, deep),
                  'lane_invasion': (CarlaLaneInvasionEvent, self.feed, deep),
                  'episode_start': (Header, self.on_episode_start, deep),
                  'episode_end': (String, self.on_episode_end, deep)}
        topics = input_topics(config.camera_topic, config.control_source, role)
        for kind, topic in topics.items():
            msg_type, handler, qos = inputs[kind]
            node.create_subscription(msg_type, topic,
                                     guard_callback(node, _named_handler(handler, kind)), qos)
        node.create_subscription(String, f'/av_td3/{role}/policy_in_use',
                                 guard_callback(node, self.on_policy_in_use), LATCHED)
        self.reset_client = node.create_client(Trigger, f'/av_td3/{role}/reset_episode')

    def on_policy_in_use(self, msg: String):
        """Remember which checkpoint the driver drives (it names evaluations)."""
        self.policy_in_use = msg.data

    def feed(self, kind: str, msg) -> bool:
        """Hand `msg` to the assembler; log a refused one (throttled per kind); say if used."""
        problem = self.messages.feed(kind, msg)
        if problem is not None:
            level = 'error' if kind in ('camera', 'route') else 'warn'
            self.node.learner.log_throttled(level, f'{kind}_{self.role}',
                                            f'{self.role}: {problem}')
        return problem is None

    def on_image(self, kind: str, msg: Image):
        """Add the frame (preprocessed exactly as the driver does) and store what it closed."""
        if self.feed(kind, msg):
            self.last_frame = time.monotonic()
            self.store_output()

    def on_control(self, kind: str, msg):
        """Pair the driver's command (or the applied control) with its frame; store."""
        self.feed(kind, msg)
        self.store_output()

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
        """Ask again when a requested reset brought no episode_start in episode_start_timeout."""
        if self.reset_requested is None or not self.assembler.ended:
            return
        waited = time.monotonic() - self.reset_requested
        if waited > self.node.config.episode_start_timeout:
            self.node.get_logger().warn(f'{self.role}: no episode_start {waited:.1f} s after '
                                        'the reset request; asking again')
            self.request_reset()

    def on_episode_start(self, kind: str, msg: Header):
        """Begin a new episode at the given stamp."""
        self.resetting = False
        self.reset_requested = None
        self.next_label = parse_episode_label(msg.frame_id)
        self.feed(kind, msg)
        self.store_output()  # the old episode's last items, before the new episode's

    def on_episode_end(self, kind: str, msg: String):
        """Handle the simulator's 'terminated:<reason>' or 'truncated:<reason>' message."""
        self.feed(kind, msg)
        self.resetting = True  # the simulator resets by itself
        self.store_output()

    def store_output(self):
        """Store assembled output (score evaluation episodes); reset after trainer-side ends.

        Output comes in stream order, so the episode's label changes at its first item.
        """
        learner = self.node.learner
        for item in self.assembler.pop_output():
            if isinstance(item, EpisodeStart) and self.episode_label != self.next_label:
                self.episode_label = self.next_label
                if self.episode_label.evaluation_index == 1:
                    learner.begin_evaluation(self.role, self.policy_in_use)
            if not self.episode_label.evaluating:
                learner.store(self.role, item)
            elif isinstance(item, EpisodeEnd):
                learner.record_evaluation(self.role, self.episode_label, item,
                                          self.policy_in_use)
            if isinstance(item, EpisodeEnd) and item.needs_reset and not self.resetting:
                self.request_reset()

    def request_reset(self):
        """Ask the simulator side to respawn the vehicle (asynchronously)."""
        self.resetting = True
        self.reset_requested = time.monotonic()
        if not self.reset_client.service_is_ready():
            self.node.learner.log_throttled('warn', f'reset_{self.role}', f'{self.role}: reset '
                                            'service not available; waiting for an '
                                            'episode_start')
            return
        self.reset_client.call_async(Trigger.Request())


class TrainerNode(Node):
    """Learn the driving policy from the ROS graph: feeds -> `Learner` in a worker thread."""

    def __init__(self):
        """Read parameters, open the learner (resuming if asked), wire the topics."""
        super().__init__('trainer')
        self.config = config = with_initial_policy_decisions(read_config(self))
        torch.set_num_threads(config.torch_threads)
        broadcast = (PolicyBroadcaster(self, config.policy_topic).publish_file  # to drivers
                     if config.policy_topic else None)
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

    def log_progress(self):
        """Print one progress line (steps, episodes, return, updates/s, drops)."""
        learner = self.learner
        now = time.monotonic()
        rate = learner.take_update_count() / max(now - self._last_log, 1e-9)
        self._last_log = now
        stats = [f.assembler.stats for f in self.feeds]
        n = {name: sum(getattr(s, name) for s in stats) for name in (
            'frames', 'dropped_unpaired', 'dropped_no_odometry', 'dropped_stale', 'missed_frames',
            'gap_collisions', 'bad_routes', 'bad_odometry', 'bad_commands', 'late_events')}
        refused = n['bad_routes'] + n['bad_odometry'] + n['bad_commands']
        returns = learner.recent_returns
        mean_return = f'{np.mean(returns):.1f}' if returns else 'n/a'
        self.get_logger().info(
            f'steps {learner.env_steps} | episodes {learner.episodes} | mean return (last 20) '
            f'{mean_return} | updates {learner.updates} ({rate:.1f}/s) | buffer '
            f'{learner.buffer.size} | frames {n["frames"]} (no command {n["dropped_unpaired"]}, '
            f'no odometry/route {n["dropped_no_odometry"]}, stale {n["dropped_stale"]}, missed '
            f'{n["missed_frames"]}) | refused routes/odometry/commands {refused} | events '
            f'beyond the window {n["late_events"]} | collisions between chains '
            f'{n["gap_collisions"]} | unstored {learner.unstored}')
        if learner.tb is not None:
            learner.tb.add_scalar('train/updates_per_s', rate, learner.updates)
            learner.tb.flush()

    def shutdown(self):
        """Stop updates, store the steps still held back, save the state, close everything."""
        self._stop.set()
        self.worker.join(timeout=30.0)
        for feed in self.feeds:
            for item in feed.assembler.finish():
                self.learner.store(feed.role, item)
        self.learner.close()


def main(args=None):
    """Run the trainer node until shutdown, then save its state."""
    # One executor thread for every callback (TD3 updates have their own thread): under load,
    # rclpy's MultiThreadedExecutor with callback groups stopped serving the feeds for good.
    run_node(TrainerNode, args, before_destroy=TrainerNode.shutdown)


if __name__ == '__main__':
    main()
