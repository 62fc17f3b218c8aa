"""Episodes in CARLA through the bridge itself: when to teleport, re-route, start and end.

The pure decision core of `carla_episode_manager` (no rclpy). A reset goes:

1. teleport: put the ego vehicle on the next spawn point, at standstill;
2. confirm: wait for odometry that shows the car there;
3. route: send the goal and wait for a route that starts near the car and ends near that
   goal (not one planned before the teleport, nor one re-planned to the old goal);
4. start: the first frame at or after the confirming odometry starts the episode.

A step not done within `reset_timeout` (steady clock) is retried from 1. After every
`eval_every` training episodes come `eval_episodes` evaluation episodes (labelled in
episode_start, `episode_label.py`), from the first spawn points in order, so that every
evaluation drives the same routes and their scores compare. An episode ends
at the route's end (terminated: route_completed), when stuck (truncated: stuck) or after
`episode_timeout` (truncated: time_limit), in simulator time. Collisions and leaving the
lane end episodes in the trainer, which then asks for a reset.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from av_td3_ros.task.episode_end import EpisodeEndMessage, format_episode_end
from av_td3_ros.task.episode_label import EpisodeLabel
from av_td3_ros.validation import check_choice


@dataclass(frozen=True)
class MapPose:
    """A pose in the bridge's map frame: metres, yaw in degrees (counter-clockwise)."""

    x: float
    y: float
    z: float = 0.0
    yaw: float = 0.0

    def distance_to(self, x: float, y: float) -> float:
        """Return the planar distance to (x, y)."""
        return math.hypot(self.x - x, self.y - y)


def poses_from_flat(values, width: int = 4) -> tuple[MapPose, ...]:
    """Read [x, y, z, yaw, x, y, z, yaw, ...] into poses; raise ValueError if ragged."""
    values = [float(v) for v in values]
    if len(values) % width:
        raise ValueError(f'{len(values)} numbers are not groups of {width} (x, y, z, yaw)')
    if not all(math.isfinite(v) for v in values):
        raise ValueError('spawn points and goals must be finite')
    return tuple(MapPose(*values[i:i + width]) for i in range(0, len(values), width))


@dataclass(frozen=True)
class EpisodeManagerConfig:
    """Where episodes start and when they end."""

    spawn_points: tuple[MapPose, ...]
    # Empty: the next spawn point is the goal; with one spawn point, the end of the last
    # route (the waypoint publisher's own goal) is asked for again.
    goals: tuple[MapPose, ...] = ()
    order: str = 'sequential'  # or 'random'
    seed: int = 0
    spawn_tolerance: float = 2.0  # m: odometry this close to the spawn point confirms it
    route_start_tolerance: float = 10.0  # m: a route starting farther away is an old one
    goal_tolerance: float = 5.0  # m from the route's last pose: route completed
    stuck_speed: float = 0.5  # m/s
    stuck_time: float = 20.0  # s of simulator time below stuck_speed
    episode_timeout: float = 300.0  # s of simulator time
    reset_timeout: float = 10.0  # s of steady time per reset attempt
    eval_every: int = 0  # training episodes between evaluations; 0: no evaluation
    eval_episodes: int = 3  # noise-free episodes per evaluation

    def __post_init__(self):
        """Refuse configurations that cannot run episodes."""
        if not self.spawn_points:
            raise ValueError('no spawn points: set spawn_points or spawn_points_file')
        if self.goals and len(self.goals) != len(self.spawn_points):
            raise ValueError(f'{len(self.goals)} goals for {len(self.spawn_points)} spawn '
                             'points: give one goal per spawn point, or none')
        check_choice('order', self.order, ('sequential', 'random'))
        if self.eval_every < 0 or self.eval_episodes < 1:
            raise ValueError(f'eval_every {self.eval_every} must be >= 0 and eval_episodes '
                             f'{self.eval_episodes} >= 1')


class Teleport(NamedTuple):
    """Put the car at `pose`, at standstill."""

    pose: MapPose


class SendGoal(NamedTuple):
    """Ask the waypoint publisher for a route to `pose`."""

    pose: MapPose


class StartEpisode(NamedTuple):
    """Publish episode_start: `label` (its number, evaluation or not), first frame `stamp_ns`."""

    number: int
    stamp_ns: int
    spawn_index: int
    label: EpisodeLabel


class EndEpisode(NamedTuple):
    """Publish episode_end `<kind>:<reason>`."""

    kind: str  # terminated or truncated
    reason: str
    steps: int
    stamp_ns: int

    def text(self) -> str:
        """Return the episode_end message data (docs/carla.md: Episode reset interface)."""
        return format_episode_end(EpisodeEndMessage(self.kind, self.reason, steps=self.steps,
                                                    stamp_ns=self.stamp_ns))


class EpisodeManager:
    """Track one vehicle's episodes; every input returns the actions to take, in order."""

    def __init__(self, config: EpisodeManagerConfig):
        """Start idle: the first reset starts episode 1."""
        self.config = config
        self.state = 'idle'
        self.episode = 0
        self.resets = 0
        self._random = random.Random(config.seed)
        self._spawn_index = -1
        self._training_spawn = -1  # evaluations do not move the training order on
        self._attempt_started: float | None = None
        self._confirmed_ns: int | None = None  # odometry stamp that showed the teleport
        self._route: list[tuple[float, float]] = []
        self._last_route_end: MapPose | None = None
        self._expected_goal: MapPose | None = None  # the goal sent for this reset
        self._start_ns = 0
        self._steps = 0
        self._slow_since_ns: int | None = None
        self._training_since_evaluation = 0
        self._evaluation_index = 0  # of the coming or running episode; 0: training

    @property
    def spawn(self) -> MapPose:
        """Return the current episode's spawn point."""
        return self.config.spawn_points[self._spawn_index]

    @property
    def goal(self) -> MapPose | None:
        """Return the current episode's goal (None: none known yet)."""
        config = self.config
        if config.goals:
            return config.goals[self._spawn_index]
        if len(config.spawn_points) > 1:
            return config.spawn_points[(self._spawn_index + 1) % len(config.spawn_points)]
        return self._last_route_end

    def request_reset(self, now: float) -> list:
        """Start a reset (the trainer's call, or the end of an episode); no-op while one runs."""
        if self.state in ('teleporting', 'routing', 'awaiting_frame'):
            return []
        self.resets += 1
        config = self.config
        count = len(config.spawn_points)
        if config.eval_every and (
                0 < self._evaluation_index < config.eval_episodes
                or (self._evaluation_index == 0
                    and self._training_since_evaluation >= config.eval_every)):
            self._evaluation_index += 1
            self._spawn_index = (self._evaluation_index - 1) % count
            return self._teleport(now)
        if self._evaluation_index:
            self._evaluation_index = self._training_since_evaluation = 0
        self._training_since_evaluation += 1
        if config.order == 'random':
            self._training_spawn = self._random.randrange(count)
        else:
            self._training_spawn = (self._training_spawn + 1) % count
        self._spawn_index = self._training_spawn
        return self._teleport(now)

    def _teleport(self, now: float) -> list:
        self.state = 'teleporting'
        self._attempt_started = now
        self._confirmed_ns = None
        self._route = []  # only a route planned after this teleport counts
        return [Teleport(self.spawn)]

    def on_timer(self, now: float) -> list:
        """Retry a reset step that took longer than reset_timeout (steady clock)."""
        if (self._attempt_started is not None
                and self.state in ('teleporting', 'routing', 'awaiting_frame')
                and now - self._attempt_started > self.config.reset_timeout):
            return self._teleport(now)
        return []

    def on_odometry(self, stamp_ns: int, x: float, y: float, speed: float,
                    now: float) -> list:
        """Confirm a teleport, or check a running episode for stuck / timeout / completion."""
        if self.state == 'teleporting':
            if self.spawn.distance_to(x, y) <= self.config.spawn_tolerance:
                self.state = 'routing'
                self._confirmed_ns = stamp_ns
                self._attempt_started = now
                goal = self._expected_goal = self.goal
                return ([SendGoal(goal)] if goal is not None else []) + \
                    self._check_route_ready()
            return []
        if self.state != 'running' or stamp_ns < self._start_ns:
            return []
        config = self.config
        if self._route and math.hypot(x - self._route[-1][0], y - self._route[-1][1]) \
                <= config.goal_tolerance:
            return self._end('terminated', 'route_completed', stamp_ns, now)
        if speed < config.stuck_speed:
            if self._slow_since_ns is None:
                self._slow_since_ns = stamp_ns
            elif (stamp_ns - self._slow_since_ns) * 1e-9 >= config.stuck_time:
                return self._end('truncated', 'stuck', stamp_ns, now)
        else:
            self._slow_since_ns = None
        if (stamp_ns - self._start_ns) * 1e-9 >= config.episode_timeout:
            return self._end('truncated', 'time_limit', stamp_ns, now)
        return []

    def on_route(self, points: list[tuple[float, float]], now: float) -> list:
        """Take a new route; while resetting, one that starts at the spawn point is the one."""
        self._route = list(points)
        if self._route:
            self._last_route_end = MapPose(*self._route[-1])
        if self.state == 'routing':
            return self._check_route_ready()
        return []

    def _check_route_ready(self) -> list:
        tolerance = self.config.route_start_tolerance
        goal = self._expected_goal
        if (self._route and self.spawn.distance_to(*self._route[0]) <= tolerance
                and (goal is None or goal.distance_to(*self._route[-1]) <= tolerance)):
            self.state = 'awaiting_frame'
        return []

    def on_frame(self, stamp_ns: int, now: float) -> list:
        """Count steps; the first frame after a confirmed reset starts the episode."""
        if self.state == 'running':
            self._steps += 1
            return []
        if self.state == 'awaiting_frame' and stamp_ns >= self._confirmed_ns:
            self.episode += 1
            self.state = 'running'
            self._attempt_started = None
            self._start_ns = stamp_ns
            self._steps = 1
            self._slow_since_ns = None
            label = EpisodeLabel(str(self.episode), self._evaluation_index,
                                 self.config.eval_episodes if self._evaluation_index else 0)
            return [StartEpisode(self.episode, stamp_ns, self._spawn_index, label)]
        return []

    def _end(self, kind: str, reason: str, stamp_ns: int, now: float) -> list:
        self.state = 'ended'
        end = EndEpisode(kind, reason, self._steps, stamp_ns)
        return [end, *self.request_reset(now)]  # this manager ended it: it resets by itself
