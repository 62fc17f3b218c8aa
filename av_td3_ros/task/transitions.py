"""Pair camera frames, commands and odometry of one vehicle into TD3 transitions (no ROS).

The driver answers every frame with one command stamped with the frame's stamp, so a frame
and its action pair by exact stamp; kinematics come from the newest odometry not newer than
the frame. A frame whose command never arrives still ends the transition from the previous
frame, but none can start from it: the chain restarts at the next good frame. A frame
without odometry or route is dropped. A command stamped between two frames means this
assembler lost a frame the driver saw: the chain restarts there too, rather than link two
frames across two actions. All are counted; a collision in such a gap still ends the episode.

Messages may interleave across topics: a frame waits for its command while fewer than
`max_pending_frames` newer frames wait. Each step's output is held back until the next frame
is emitted, so an episode_start that overtakes the new episode's first frame can still move
that frame out of the old episode (no transition spans a reset).

Collision and lane-invasion events arrive asynchronously (CARLA's bridge publishes them when
the sensor reports, possibly after later frames), so a frame is decided - labelled terminal
or not, rewarded - only once a frame stamped `event_window` seconds later has arrived (or the
episode ends, the stream goes quiet, or it shuts down). Later events are counted
(`late_events`). Unusable routes count as no route; unusable odometry is ignored.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from av_td3_ros.policy.features import (
    ROUTE_START_HINT,
    FeatureConfig,
    Pose2D,
    kinematic_vector,
    odometry_problem,
    route_problem,
)
from av_td3_ros.task.reward import RewardConfig, RewardFunction, StepEvents, VehicleState

COMPLETION_REASONS = ('route completed', 'route_completed', 'lap_complete', 'arrived')
"""End reasons (ours, or a simulator's after `simulator: `) that mean the route was driven."""

MAX_YAW_RATE = 100.0
"""Largest |yaw rate| (rad/s) taken from odometry; others (and NaN) count as 0."""


@dataclass(frozen=True)
class EpisodeConfig:
    """When an episode ends."""

    max_steps: int = 1000
    """Step limit: a truncation (bootstraps), not a termination."""
    max_lateral_deviation: float = 2.5
    """Terminate when the vehicle is farther than this from the route (m)."""
    goal_tolerance: float = 2.0
    """Route completed (terminated) within this distance of its end (m)."""
    max_pending_frames: int = 4
    """Give up on a frame's command once this many newer frames are waiting."""
    event_window: float = 0.2
    """Seconds (by frame stamps) a step waits for late collision/lane-invasion events."""

    def route_end(self, state: VehicleState) -> tuple[bool, bool, str] | None:
        """Return (True, False, reason) beyond the lateral limit or at the route's end."""
        if abs(state.lateral_deviation) > self.max_lateral_deviation:
            return True, False, 'lateral deviation'
        if state.distance_to_goal <= self.goal_tolerance:
            return True, False, 'route completed'
        return None


@dataclass
class _Observation:
    stamp: int
    frame: np.ndarray  # (84, 84) uint8
    vec: np.ndarray | None = None  # kinematic vector, float32 (computed when emitted)
    state: VehicleState | None = None
    route: np.ndarray | None = None  # the route the state was measured on
    action: np.ndarray | None = None
    simulator_end: tuple[bool, bool, str] | None = None


@dataclass(frozen=True)
class EpisodeStart:
    """The first observation of an episode (the replay buffer's episode start)."""

    frame: np.ndarray
    """(84, 84) uint8."""
    vec: np.ndarray
    """Kinematic vector, float32."""


@dataclass(frozen=True)
class Transition:
    """One transition ready for the replay buffer, with its reward terms for logging."""

    stamp: int
    action: np.ndarray
    reward: float
    next_frame: np.ndarray
    next_vec: np.ndarray
    terminated: bool
    truncated: bool
    terms: dict[str, float] = field(default_factory=dict)
    end_reason: str = ''


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode's end, after its last transition."""

    episode_return: float
    steps: int
    reason: str
    needs_reset: bool
    """True when the assembler ended the episode: the simulator side must be asked to reset."""
    route_completion: float = 0.0
    """Share of the route driven, 0 to 1 (1 when completed): 1 - left / length at the start."""
    collisions: int = 0
    """Collision events in the episode's steps."""
    lane_invasions: int = 0
    """Lane-invasion events in the episode's steps."""


AssemblerOutput = EpisodeStart | Transition | EpisodeEnd
"""What `TransitionAssembler.pop_output` returns a list of, in stream order."""


@dataclass
class AssemblerStats:
    """Counters the trainer logs."""

    frames: int = 0
    steps: int = 0
    dropped_unpaired: int = 0
    dropped_no_odometry: int = 0
    dropped_stale: int = 0
    late_events: int = 0
    """Events that arrived after their step was decided (beyond the event window)."""
    missed_frames: int = 0
    """Chains broken because a command came for a frame that never arrived here."""
    gap_collisions: int = 0
    """Collisions that ended an episode between two chains (no transition to label)."""
    bad_routes: int = 0
    bad_odometry: int = 0
    bad_commands: int = 0
    episodes: int = 0


class TransitionAssembler:
    """Turn one vehicle's message streams into episode starts and transitions.

    Feed messages with the `on_*` methods (stamps in integer nanoseconds); collect output
    with `pop_output()`: `EpisodeStart`, `Transition` and `EpisodeEnd` items in order.
    """

    def __init__(self, features: FeatureConfig = FeatureConfig(),
                 reward: RewardConfig | None = None,
                 episode: EpisodeConfig | None = None):
        """Start waiting for the first frame."""
        self.features = features
        self.episode = episode or EpisodeConfig()
        self.reward = RewardFunction(reward or RewardConfig())
        self.stats = AssemblerStats()
        self.route: np.ndarray | None = None
        self._odometry: list[tuple[int, Pose2D, float, float]] = []  # sorted by stamp
        self._pending: deque[_Observation] = deque()
        self._actions: dict[int, np.ndarray] = {}
        self._events: list[tuple[int, str]] = []
        self._previous: _Observation | None = None
        self._episode_floor = -1  # frames not newer than this belong to an old episode
        self._ended = False
        self._episode_return = 0.0
        self._episode_steps = 0
        self._episode_events = {'collision': 0, 'lane_invasion': 0}
        self._route_length: float | None = None  # left to drive at the episode's first frame
        self._route_left: float | None = None  # left to drive at its newest frame
        self._route_left_before: float | None = None  # at the frame before that
        self._output: list[AssemblerOutput] = []
        # (obs, its output items, its reward)
        self._held: tuple[_Observation, list[AssemblerOutput], float] | None = None
        self._parked: list[_Observation] = []  # frames seen after an end, before the restart
        self._window_ns = round(self.episode.event_window * 1e9)
        self._newest_frame = -1  # newest frame stamp seen: how far the stream's time got
        self._decided = -1  # stamp of the newest decided (emitted) frame of this episode
        self._gap_floor: int | None = None  # the chain broke after this frame (mid-episode)

    def on_route(self, route: np.ndarray | None) -> str | None:
        """Use a new route (M, 2); return why it is unusable (then: no route), or None."""
        problem = 'no route' if route is None else route_problem(route)
        if problem is not None:
            self.stats.bad_routes += route is not None
            self.route = None
            return problem
        self.route = np.asarray(route, np.float64)
        return None

    def on_odometry(self, stamp: int, pose: Pose2D, speed: float,
                    yaw_rate: float) -> str | None:
        """Remember an odometry sample (the newest 64); return why it is unusable, or None.

        A yaw rate beyond MAX_YAW_RATE or NaN counts as 0.
        """
        problem = odometry_problem(pose.x, pose.y, pose.yaw, speed)
        if problem is not None:
            self.stats.bad_odometry += 1
            return problem
        # Only the comfort term uses it: an absurd value must not make the reward NaN.
        yaw_rate = float(yaw_rate) if abs(yaw_rate) <= MAX_YAW_RATE else 0.0
        self._odometry.append((stamp, pose, float(speed), yaw_rate))
        if len(self._odometry) > 1 and stamp < self._odometry[-2][0]:
            self._odometry.sort(key=lambda entry: entry[0])
        if len(self._odometry) > 64:
            first = len(self._odometry) - 64
            oldest = self._oldest_waiting()
            if oldest is not None:  # keep the sample a waiting frame will be measured with
                first = min(first, max(self._odometry_index(oldest) - 1, 0))
            del self._odometry[:first]
        return None

    def on_event(self, stamp: int, kind: str):
        """Record a 'collision' or 'lane_invasion' event (it may come after its frame)."""
        if stamp <= self._decided and not self._ended:
            self.stats.late_events += 1  # its step is already labelled and written
        self._events.append((stamp, kind))
        del self._events[:-256]

    def on_control(self, stamp: int, action: np.ndarray) -> str | None:
        """Record the action taken on the frame `stamp`; return why it is refused, or None."""
        action = np.asarray(action, np.float32)
        if not np.isfinite(action).all():
            self.stats.bad_commands += 1
            return f'non-finite action {action.tolist()}'
        self._actions[stamp] = action
        if len(self._actions) > 256:  # commands for frames never seen (e.g. watchdog brakes)
            oldest = self._oldest_waiting()
            for old in sorted(self._actions)[:-128]:
                if oldest is None or old < oldest:  # never a waiting frame's command
                    del self._actions[old]
        self._drain()
        return None

    def on_frame(self, stamp: int, frame: np.ndarray):
        """Add a preprocessed (84, 84) uint8 frame taken at `stamp`."""
        self.stats.frames += 1
        self._newest_frame = max(self._newest_frame, stamp)
        if stamp <= max(self._episode_floor, self._decided):
            # From an old episode, or older than a frame already decided (so late that its
            # transition would run backwards in time).
            self.stats.dropped_stale += 1
            return
        odometry = self._odometry_at(stamp)
        if odometry is None or self.route is None:
            self.stats.dropped_no_odometry += 1
            self._break_chain()
            return
        obs = _Observation(stamp, frame)
        if self._ended:
            # Possibly the next episode's first frame, ahead of its episode_start message.
            self._parked = [*self._parked[-7:], obs]
            return
        self._pending.append(obs)
        self._pending = deque(sorted(self._pending, key=lambda pending: pending.stamp))
        self._drain()

    def on_episode_end(self, kind: str, reason: str):
        """Mark the newest frame as the last of an episode the simulator ended."""
        if self._ended:
            return
        end = (kind == 'terminated', kind == 'truncated', f'simulator: {reason}')
        if self._pending:
            self._pending[-1].simulator_end = end
            self._drain(decide_until=self._pending[-1].stamp)
        elif self._held is not None and isinstance(self._held[1][0], Transition):
            # The last transition is still held back: give it the simulator's end flags.
            items = self._held[1]
            items[0] = replace(items[0], terminated=end[0], truncated=end[1],
                               end_reason=end[2])
            self._release()
            self._end_episode(end[2], needs_reset=False)
        elif self._previous is not None:
            # Its transition is already out without an end flag: it bootstraps like a
            # truncation, the safe side (rather than rewrite the buffer).
            self._release()
            self._end_episode(end[2], needs_reset=False)

    def on_episode_start(self, stamp: int):
        """Start a new episode whose first frame is stamped `stamp`; older frames are stale."""
        self._drain(decide_until=stamp - 1)  # the old episode's frames waiting for events
        moved = None
        if self._held is not None and self._held[0].stamp >= stamp:
            # The new episode's first frame overtook this message: take it back out of the
            # old episode (its transition would span the reset).
            moved, items, reward = self._held
            self._held = None
            if isinstance(items[0], Transition):
                self._episode_return -= reward
                self._episode_steps -= 1
                self.stats.steps -= 1
                self._route_left = self._route_left_before
        if not self._ended and self._episode_steps > 0:
            self._end_episode('reset', needs_reset=False)
        self._release()
        waiting = [obs for obs in (*self._parked, *self._pending) if obs.stamp >= stamp]
        self.stats.dropped_stale += len(self._parked) + len(self._pending) - len(waiting)
        self._parked.clear()
        self._pending = deque(sorted(waiting, key=lambda obs: obs.stamp))
        self._break_chain()
        self._episode_floor = stamp - 1
        self._decided = stamp - 1
        self._gap_floor = None
        self._ended = False
        self._reset_episode_counters()
        self._events = [event for event in self._events if event[0] >= stamp]
        if moved is not None and moved.action is not None:
            self._emit(moved)  # (a first frame without a command could start no transition)
        self._drain()

    def pop_output(self) -> list[AssemblerOutput]:
        """Return and clear what is final (the newest step is held until the next one)."""
        output, self._output = self._output, []
        return output

    def decide_pending(self):
        """Decide every waiting frame now (a quiet stream: no newer frame closes the window)."""
        if self._pending:
            self._drain(decide_until=self._pending[-1].stamp)

    def finish(self) -> list[AssemblerOutput]:
        """Decide waiting frames, release the held-back step (at shutdown); return output."""
        self.decide_pending()
        self._release()
        return self.pop_output()

    @property
    def ended(self) -> bool:
        """Return True after an episode end and before the next on_episode_start."""
        return self._ended

    def _odometry_index(self, stamp: int) -> int:
        """Return how many odometry samples are not newer than `stamp`."""
        return bisect_right([entry[0] for entry in self._odometry], stamp)

    def _odometry_at(self, stamp: int):
        index = self._odometry_index(stamp)
        return self._odometry[index - 1] if index else None

    def _oldest_waiting(self) -> int | None:
        """Return the stamp of the oldest frame still waiting to be decided, or None."""
        stamps = [obs.stamp for obs in (*self._parked, *self._pending)]
        return min(stamps) if stamps else None

    def _observe(self, obs: _Observation) -> _Observation:
        """Compute features and state once, as late as possible (late odometry, new route)."""
        if obs.state is None:
            # The newest odometry not newer than the frame, looked up now rather than on
            # arrival: the frame's own tick's odometry may have come in after the frame.
            _, pose, speed, yaw_rate = self._odometry_at(obs.stamp)
            previous = self._previous
            if previous is not None and previous.state and previous.route is self.route:
                hint = previous.state.segment
            elif self._episode_steps == 0:
                hint = ROUTE_START_HINT  # the episode's first frame: at the route's start
            else:
                hint = None  # the chain broke mid-episode: search the whole route
            vec, route = kinematic_vector(pose, speed, self.route, self.features, hint=hint)
            obs.route = self.route
            obs.vec = vec.copy()
            obs.state = VehicleState(time=obs.stamp * 1e-9, speed=speed, yaw_rate=yaw_rate,
                                     lateral_deviation=route.lateral_deviation,
                                     heading_error=route.heading_error,
                                     distance_to_goal=route.distance_to_goal,
                                     segment=route.segment)
        return obs

    def _break_chain(self):
        self._previous = None
        self.reward.reset()

    def _drain(self, decide_until: int | None = None):
        """Emit every resolved pending frame, oldest first.

        A frame is resolved once its event window has passed (or its stamp is at most
        `decide_until`) and its command is known (or it ends the episode, or it was given up).
        """
        while self._pending and not self._ended:
            head = self._pending[0]
            if (head.stamp + self._window_ns > self._newest_frame
                    and (decide_until is None or head.stamp > decide_until)):
                return  # a collision or lane invasion for it may still be on its way
            if head.state is None and self.route is None:
                # The route turned unusable while the frame waited: as if it came without one.
                self._pending.popleft()
                self._actions.pop(head.stamp, None)
                self.stats.dropped_no_odometry += 1
                self._break_chain()
                continue
            head = self._observe(head)
            head.action = self._actions.pop(head.stamp, None)
            terminal = self._previous is not None and self._end_of(head) is not None
            if head.action is None and not terminal:
                if len(self._pending) <= self.episode.max_pending_frames:
                    return  # its command may still be on its way
                self._pending.popleft()
                self.stats.dropped_unpaired += 1
                if self._previous is not None:
                    # It still ends the transition from the previous frame (which needs only
                    # that frame's action), so an event in that step is labelled as usual.
                    self._emit(head)
                else:
                    self._decided = max(self._decided, head.stamp)
                if not self._ended:
                    self._break_chain()  # the next transition would need this frame's action
                    self._gap_floor = head.stamp
                continue
            self._pending.popleft()
            self._emit(head)

    def _end_of(self, obs: _Observation) -> tuple[bool, bool, str] | None:
        """Return (terminated, truncated, reason) if `obs` ends the episode."""
        if any(kind == 'collision' and self._previous.stamp < stamp <= obs.stamp
               for stamp, kind in self._events):
            return True, False, 'collision'
        route_end = self.episode.route_end(obs.state)
        if route_end is not None:
            return route_end
        if obs.simulator_end is not None:
            return obs.simulator_end
        if self._episode_steps + 1 >= self.episode.max_steps:
            return False, True, 'step limit'
        return None

    def _release(self):
        if self._held is not None:
            self._output.extend(self._held[1])
            self._held = None

    def _emit(self, obs: _Observation):
        self._observe(obs)
        self._decided = max(self._decided, obs.stamp)
        previous = self._previous
        self._release()
        if previous is not None and any(previous.stamp < stamp < obs.stamp
                                        for stamp in self._actions):
            # The driver answered a frame between these two that never reached us (lost or
            # overwritten in a lagging queue): previous -> obs spans two actions. Restart.
            self.stats.missed_frames += 1
            self._break_chain()
            self._gap_floor, previous = previous.stamp, None
        if previous is None and self._gap_floor is not None:
            gap, self._gap_floor = self._gap_floor, None
            if any(kind == 'collision' and gap < stamp <= obs.stamp
                   for stamp, kind in self._events):
                # The vehicle collided while the chain was broken: no transition can carry
                # the terminal flag, but the episode is over and the simulator must reset.
                self.stats.gap_collisions += 1
                self._episode_events['collision'] += 1
                self._end_episode('collision', needs_reset=True)
                return
        if previous is None:
            if obs.action is None:
                return  # no transition can start here: the chain restarts at the next command
            if self._episode_steps == 0:
                self.stats.episodes += 1
                self._route_length = obs.state.distance_to_goal
            self._route_left = obs.state.distance_to_goal
            self._held = (obs, [EpisodeStart(obs.frame, obs.vec)], 0.0)
            self._previous = obs
            return
        step_events = [kind for stamp, kind in self._events
                       if previous.stamp < stamp <= obs.stamp]
        kinds = set(step_events)
        for kind in self._episode_events:
            self._episode_events[kind] += step_events.count(kind)
        self._route_left_before, self._route_left = (self._route_left,
                                                     obs.state.distance_to_goal)
        end = self._end_of(obs)
        terminated, truncated, reason = end if end is not None else (False, False, '')
        events = StepEvents(collision='collision' in kinds,
                            lane_invasion='lane_invasion' in kinds,
                            goal_reached=reason == 'route completed')
        reward, terms = self.reward(previous.state, obs.state, events)
        item = Transition(obs.stamp, previous.action, reward, obs.frame, obs.vec, terminated,
                          truncated, terms, reason)
        self.stats.steps += 1
        self._episode_steps += 1
        self._episode_return += reward
        self._previous = obs
        if end is None:
            self._held = (obs, [item], reward)
        else:
            self._output.append(item)
            self._end_episode(reason, needs_reset=not reason.startswith('simulator'))

    def _route_completion(self, reason: str) -> float:
        length, left = self._route_length, self._route_left
        if reason.removeprefix('simulator: ') in COMPLETION_REASONS:
            return 1.0
        if length is None or left is None or length <= 0.0:
            return 0.0
        return min(max(1.0 - left / length, 0.0), 1.0)

    def _reset_episode_counters(self):
        self._episode_return, self._episode_steps = 0.0, 0
        self._episode_events = dict.fromkeys(self._episode_events, 0)
        self._route_length = self._route_left = None

    def _end_episode(self, reason: str, needs_reset: bool):
        self._release()
        self._output.append(EpisodeEnd(self._episode_return, self._episode_steps, reason,
                                       needs_reset, self._route_completion(reason),
                                       self._episode_events['collision'],
                                       self._episode_events['lane_invasion']))
        self._reset_episode_counters()
        self._ended = True
        self._pending.clear()
        self._break_chain()
