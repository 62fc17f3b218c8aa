"""carla_episode_manager: the episode-reset interface for CARLA, through the ROS bridge.

Offers `/av_td3/<role>/reset_episode` (std_srvs/Trigger) and publishes
`/av_td3/<role>/episode_start` / `episode_end`, using only what carla-simulator/ros-bridge
offers (docs/carla.md): the `actor.pseudo.control` pseudo-actor's `set_transform` and
`set_target_velocity` teleport the car, `/carla/<role>/goal` has carla_waypoint_publisher plan
a new route, and odometry, the latched waypoints and the camera's `camera_info` (same stamp as
each image, and small) tell when the reset has happened. Spawn points come from `spawn_points`,
`spawn_points_file` or, with neither, the car's pose at start. With `eval_every`, episode_start
labels evaluation episodes (`task/episode_label.py`). The decisions live in
`task/episode_rules.py`.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import yaml
from geometry_msgs.msg import Pose, PoseStamped, Twist
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from av_td3_ros.driving.ros_conversions import pose_from_odometry, speed_from_odometry, stamp_to_ns
from av_td3_ros.nodes.node_main import guard_callback, run_node
from av_td3_ros.nodes.node_params import declare
from av_td3_ros.nodes.schema import Param, Schema, same_named
from av_td3_ros.nodes.transport import LATCHED, reliable
from av_td3_ros.task.episode_rules import (
    EndEpisode,
    EpisodeManager,
    EpisodeManagerConfig,
    MapPose,
    SendGoal,
    StartEpisode,
    Teleport,
    poses_from_flat,
)


def read_spawn_file(path: str) -> tuple[tuple[MapPose, ...], tuple[MapPose, ...]]:
    """Read `spawn_points:` and `goals:` ([[x, y, z, yaw], ...]) from a YAML file."""
    content = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f'{path}: expected a mapping with spawn_points (and goals)')

    def poses(key):
        rows = content.get(key) or []
        if not all(isinstance(row, list) and len(row) == 4 for row in rows):
            raise ValueError(f'{path}: every {key} entry must be [x, y, z, yaw]')
        return poses_from_flat([value for row in rows for value in row])

    return poses('spawn_points'), poses('goals')


def pose_msg(pose: MapPose) -> Pose:
    """Return a geometry_msgs/Pose at `pose` (yaw in degrees about z)."""
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = pose.x, pose.y, pose.z
    half = math.radians(pose.yaw) / 2.0
    msg.orientation.z, msg.orientation.w = math.sin(half), math.cos(half)
    return msg


_episodes = partial(Param.of, EpisodeManagerConfig)

EPISODE_MANAGER = Schema(
    'carla_episode_manager',
    Param('role_name', 'ego_vehicle', 'CARLA role name of the ego vehicle'),
    Param('control_id', 'control', 'id of the actor.pseudo.control under the vehicle in the '
          'objects file'),
    Param('camera_info_topic', lambda values: f"/carla/{values['role_name']}/rgb_front/"
          'camera_info', 'camera_info of the camera the driver uses (same stamps as its '
          'images)'),
    Param('spawn_points_file', '', 'YAML file with spawn_points (and goals): lists of '
          '[x, y, z, yaw_deg] in the map frame'),
    Param('spawn_points', [], 'flat x, y, z, yaw_deg, ... in the map frame; empty: '
          "spawn_points_file, else the car's pose at start", items=float),
    Param('goals', [], 'one goal per spawn point (flat x, y, z, yaw_deg, ...); empty: the '
          'next spawn point', items=float),
    Param('auto_start', True, 'start the first episode as soon as the bridge is there'),
    _episodes('order', 'sequential or random spawn points'),
    _episodes('seed', 'seed of the random order', 0, 2**31 - 1),
    _episodes('spawn_tolerance', 'odometry this close to the spawn point confirms the '
              'teleport (m)', 0.01, 100.0),
    _episodes('route_start_tolerance', 'a new route must start this close to the spawn '
              'point (m)', 0.1, 1000.0),
    _episodes('goal_tolerance', 'route completed within this distance of its end (m)',
              0.1, 1000.0),
    _episodes('stuck_speed', 'slower than this (m/s) ...', 0.0, 100.0),
    _episodes('stuck_time', '... for this long (s, simulator time) ends the episode as '
              'truncated:stuck', 0.1, 1e6),
    _episodes('episode_timeout', 'episode length limit (s, simulator time): '
              'truncated:time_limit', 0.1, 1e7),
    _episodes('reset_timeout', 'retry a reset step that takes longer (s, steady clock)',
              0.1, 600.0),
    _episodes('eval_every', 'training episodes between evaluations (0: none); each '
              'evaluation drives eval_episodes noise-free episodes from the first spawn points',
              0, 10**6),
    _episodes('eval_episodes', 'episodes per evaluation', 1, 1000),
)
"""Every carla_episode_manager parameter (docs/carla.md, generated)."""


class CarlaEpisodeManagerNode(Node):
    """Reset episodes of one CARLA ego vehicle through the bridge's own topics."""

    def __init__(self):
        """Read parameters, wire the bridge topics and the reset service."""
        super().__init__('carla_episode_manager')
        values = declare(self, EPISODE_MANAGER)
        role, control = values['role_name'], values['control_id']
        self.auto_start = values['auto_start']
        self.settings = same_named(EpisodeManagerConfig, values)  # all but the poses:
        flat_spawns, flat_goals = self.settings.pop('spawn_points'), self.settings.pop('goals')
        try:
            spawns, goals = poses_from_flat(flat_spawns), poses_from_flat(flat_goals)
            if values['spawn_points_file']:
                spawns, goals = read_spawn_file(values['spawn_points_file'])
            # Checked now, also when the first odometry will give the spawn point.
            EpisodeManagerConfig(spawn_points=spawns or (MapPose(0.0, 0.0),),
                                 goals=goals if spawns else (), **self.settings)
        except (OSError, ValueError, yaml.YAMLError) as error:
            self.get_logger().fatal(f'cannot run episodes: {error}')
            raise SystemExit(2) from error
        self.manager = (EpisodeManager(EpisodeManagerConfig(spawn_points=spawns, goals=goals,
                                                            **self.settings))
                        if spawns else None)  # None: the first odometry gives the spawn point

        qos = reliable(10)
        base = f'/carla/{role}'
        self.transform_pub = self.create_publisher(Pose, f'{base}/{control}/set_transform', qos)
        self.velocity_pub = self.create_publisher(Twist, f'{base}/{control}/set_target_velocity',
                                                  qos)
        self.goal_pub = self.create_publisher(PoseStamped, f'{base}/goal', qos)
        self.start_pub = self.create_publisher(Header, f'/av_td3/{role}/episode_start', qos)
        self.end_pub = self.create_publisher(String, f'/av_td3/{role}/episode_end', qos)
        guard = lambda callback: guard_callback(self, callback)  # noqa: E731
        self.create_subscription(Odometry, f'{base}/odometry', guard(self.on_odometry), qos)
        self.create_subscription(PathMsg, f'{base}/waypoints', guard(self.on_route), LATCHED)
        self.create_subscription(CameraInfo, values['camera_info_topic'],
                                 guard(self.on_camera_info), qos)
        self.create_service(Trigger, f'/av_td3/{role}/reset_episode', guard(self.on_reset))
        # Retries run on the steady clock: simulator time stops when nothing ticks.
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.2, guard(self.on_timer), clock=self.steady)
        self._pending_routes: list = []  # routes that arrived before the manager existed
        self.get_logger().info(
            f'{role}: episodes via {base}/{control}/set_transform, goals on {base}/goal, '
            + (f'{len(spawns)} spawn points' if spawns else 'spawn point = pose at start'))

    def now(self) -> float:
        """Return steady-clock seconds."""
        return self.steady.now().nanoseconds * 1e-9

    def on_odometry(self, msg: Odometry):
        """Feed odometry; with no spawn points yet, the first one defines the spawn point."""
        pose = pose_from_odometry(msg)
        if self.manager is None:
            spawn = MapPose(pose.x, pose.y, msg.pose.pose.position.z, math.degrees(pose.yaw))
            self.manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(spawn,),
                                                               **self.settings))
            self.get_logger().info(f'spawn point: the car\'s pose at start, {spawn}')
            for route in self._pending_routes:
                self.manager.on_route(route, self.now())
        # Auto start once the bridge's control pseudo-actor listens (a teleport sent before
        # would be lost and only retried after reset_timeout).
        if (self.auto_start and self.manager.resets == 0
                and self.transform_pub.get_subscription_count() > 0):
            self.execute(self.manager.request_reset(self.now()))
        speed = speed_from_odometry(msg)
        self.execute(self.manager.on_odometry(stamp_to_ns(msg.header.stamp), pose.x, pose.y,
                                              abs(speed), self.now()))

    def on_route(self, msg: PathMsg):
        """Feed the waypoint publisher's route."""
        points = [(p.pose.position.x, p.pose.position.y) for p in msg.poses]
        if self.manager is None:
            self._pending_routes = [points]
            return
        self.execute(self.manager.on_route(points, self.now()))

    def on_camera_info(self, msg: CameraInfo):
        """Feed one camera frame's stamp."""
        if self.manager is not None:
            self.execute(self.manager.on_frame(stamp_to_ns(msg.header.stamp), self.now()))

    def on_timer(self):
        """Retry stalled resets."""
        if self.manager is not None:
            self.execute(self.manager.on_timer(self.now()))

    def on_reset(self, request, response):
        """Start a reset (the trainer calls this after ending an episode)."""
        if self.manager is None:
            response.success, response.message = False, 'no odometry yet: no spawn point'
            return response
        actions = self.manager.request_reset(self.now())
        response.success = True
        response.message = ('resetting' if actions else 'a reset is already under way')
        self.get_logger().info(f'reset_episode called: {response.message}')
        self.execute(actions)
        return response

    def execute(self, actions):
        """Publish what the manager decided."""
        for action in actions:
            if isinstance(action, Teleport):
                self.velocity_pub.publish(Twist())
                self.transform_pub.publish(pose_msg(action.pose))
                self.velocity_pub.publish(Twist())  # at standstill after the move too
                self.get_logger().info(f'reset {self.manager.resets}: teleport to {action.pose}')
            elif isinstance(action, SendGoal):
                goal = PoseStamped(pose=pose_msg(action.pose))
                goal.header.frame_id = 'map'
                goal.header.stamp = self.get_clock().now().to_msg()
                self.goal_pub.publish(goal)
            elif isinstance(action, StartEpisode):
                header = Header(frame_id=action.label.text())
                header.stamp.sec, header.stamp.nanosec = divmod(action.stamp_ns, 10**9)
                self.start_pub.publish(header)
                kind = (f' (evaluation {action.label.evaluation_index}/'
                        f'{action.label.evaluation_size})' if action.label.evaluating else '')
                self.get_logger().info(f'episode {action.number}{kind} starts at spawn point '
                                       f'{action.spawn_index}')
            elif isinstance(action, EndEpisode):
                self.end_pub.publish(String(data=action.text()))
                self.get_logger().info(f'episode {self.manager.episode} ended: {action.text()}')


def main(args=None):
    """Run the episode manager until shutdown."""
    run_node(CarlaEpisodeManagerNode, args)


if __name__ == '__main__':
    main()
