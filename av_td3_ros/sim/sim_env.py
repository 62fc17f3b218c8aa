"""Run gymnasium's CarRacing-v3 as a stand-in for a CARLA ego vehicle (no ROS imports).

`SimEnv` wraps the unwrapped CarRacing-v3 environment and exposes, per step, what the CARLA
ROS bridge would publish: a BGRA camera frame, the car pose and velocities, the track centre
line as waypoints, an off-track flag, and the episode's end with a reason.

Units and frames (checked against CarRacing's geometry, gymnasium 1.4.0):

* Lengths: 1 Box2D unit is taken as 1 metre, with no conversion. The car hull is 5.0 units
  long and 2.8 wide (wheels included) and the road 13.3 wide, i.e. car-sized in metres.
* Map frame: CarRacing's Box2D world frame, x and y as Box2D has them, z up (right-handed, as
  ROS REP 103 wants; the rendered view flips the image so that world +y is up on screen).
* Yaw: the car body's forward axis is its local +y, so yaw = hull.angle + pi/2, wrapped to
  [-pi, pi). yaw = 0 means heading +x; positive yaw is counter-clockwise.
* Body frame (as a ROS base_link / CARLA after the bridge's conversion): x forward, y left.
  `vx`, `vy` are the body-frame velocity, `yaw_rate` is positive counter-clockwise.
* Time: CarRacing always integrates 1/50 s of physics per step (`PHYSICS_DT`). A step is
  labelled `step_seconds` of sim time (default 0.05 s, the CARLA bridge's fixed delta), so
  velocities and the yaw rate are reported per second of *sim time*: Box2D values times
  PHYSICS_DT / step_seconds (0.4 by default). Then position change per step equals
  velocity * step_seconds, as a consumer integrating odometry over header stamps expects.
* Steering: +1 is full right in both CarRacing and CarlaEgoVehicleControl, so commands pass
  through unchanged; throttle maps to CarRacing's gas. There is no reverse gear.

Episodes end with `terminated` and reason `lap_complete` (CarRacing's lap rule: start tile
reached after visiting > 95 % of tiles), `off_playfield` (CarRacing's -100 exit) or
`off_track` (only if `max_off_track_steps` > 0: all four wheels off the road for that many
consecutive steps), or with `truncated` and reason `time_limit` after `max_episode_steps`.

Only one rendering is made per step: the 96x96 observation CarRacing renders every step is
not the camera and is skipped, which roughly doubles the step rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d import car_racing

from av_td3_ros.policy.features import clamp, resample_route, wrap_angle
from av_td3_ros.task.reward import STAND_IN_REWARD
from av_td3_ros.validation import check_at_least, check_range

PHYSICS_DT = 1.0 / car_racing.FPS
"""Physics seconds CarRacing integrates per step (fixed by the environment)."""

PLAYFIELD = car_racing.PLAYFIELD
"""Half-size of the square world; leaving it ends the episode with reason off_playfield."""

MAX_WHEEL_ANGLE = 0.4
"""Front wheel angle in radians at |steer| = 1 (CarRacing's steering joint limit)."""

WHEELBASE = 3.24
"""Distance between front and rear axles in metres (CarRacing wheel positions +0.80 / -0.82)."""

END_REASONS = ('lap_complete', 'off_playfield', 'off_track', 'time_limit')
"""Every reason an episode can end with; only time_limit is a truncation."""


@dataclass(frozen=True)
class SimEnvConfig:
    """Settings of the stand-in simulator."""

    image_width: int = 600
    image_height: int = 400
    step_seconds: float = 0.05
    max_episode_steps: int = 1000
    max_off_track_steps: int = 0
    lap_complete_percent: float = 0.95
    render_camera: bool = True
    """False skips the camera render (a blank frame): 7 ms less per step, for drivers that
    need only the pose and the route (the expert, evaluations of it)."""
    route_spacing: float = 0.0
    """Resample the route (`waypoints`) every this many metres of arc length, as a planner
    with another spacing would give it (CARLA's waypoint publisher: 1 m); 0: CarRacing's
    own centre-line points, about 3.5 m apart."""

    def __post_init__(self):
        """Reject settings the simulator cannot honour."""
        if self.image_width < 1 or self.image_height < 1:
            raise ValueError('image size must be positive')
        check_range('step_seconds', self.step_seconds, 0.0, low_open=True)
        # 0 disables a step limit.
        check_at_least(self, 0, 'max_episode_steps', 'max_off_track_steps', 'route_spacing')


@dataclass
class SimState:
    """What the simulator reports after a reset or a step.

    `frame` is a view of a buffer the next step overwrites: copy it to keep it.
    """

    frame: np.ndarray
    x: float
    y: float
    yaw: float
    vx: float
    vy: float
    yaw_rate: float
    speed: float
    wheels_off_track: int
    off_track: bool
    lane_invasion: bool
    reward: float
    episode_return: float
    steps: int
    terminated: bool
    truncated: bool
    reason: str
    control: tuple[float, float, float]

    @property
    def done(self) -> bool:
        """Return True when this step ended the episode."""
        return self.terminated or self.truncated


class SimEnv:
    """CarRacing-v3 with CARLA-bridge-like outputs; see the module docstring for conventions."""

    reward_config = STAND_IN_REWARD
    """The shaped-reward settings that fit this road (use them with RewardFunction)."""

    def __init__(self, config: SimEnvConfig | None = None):
        """Create the environment; call `reset` before `step`."""
        self.config = config or SimEnvConfig()
        # Only the unwrapped env is driven: the TimeLimit and checker wrappers would count
        # steps and validate the (skipped) observation; this class handles both itself.
        self._raw = gym.make('CarRacing-v3', render_mode='rgb_array',
                             lap_complete_percent=self.config.lap_complete_percent).unwrapped
        self._skip_observation_render()
        self._time_scale = PHYSICS_DT / self.config.step_seconds
        self._bgra = np.zeros((self.config.image_height, self.config.image_width, 4), np.uint8)
        self._resize = (self.config.image_width, self.config.image_height) != (
            car_racing.VIDEO_W, car_racing.VIDEO_H)
        self._action = np.zeros(3, np.float64)
        self._waypoints = np.zeros((0, 2))
        self._waypoint_yaws = np.zeros(0)
        self._wheel_on_road = [True] * 4
        self._steps = 0
        self._return = 0.0
        self._off_track_run = 0
        self._ended = True

    def _skip_observation_render(self):
        """Make CarRacing's step skip its 96x96 observation render (half the step cost).

        CarRacing's step stores `_render('state_pixels')` as its observation; nothing here
        reads it, and rendering has no effect on the physics, so returning None is safe.
        """
        render = self._raw._render

        def render_without_observation(mode):
            if mode == 'state_pixels':
                return None
            return render(mode)

        self._raw._render = render_without_observation

    @property
    def waypoints(self) -> np.ndarray:
        """Return the track centre line as an (N, 2) array in the map frame, driving order.

        The line is closed: the last point equals the first, where the car starts. CarRacing
        spaces its points about 3.5 m apart (its TRACK_DETAIL_STEP of 21 / 6);
        `route_spacing` resamples them.
        """
        return self._waypoints

    @property
    def waypoint_yaws(self) -> np.ndarray:
        """Return the driving direction of the centre line at each waypoint (radians)."""
        return self._waypoint_yaws

    @property
    def episode_steps(self) -> int:
        """Return the number of steps taken in the current episode."""
        return self._steps

    @property
    def episode_return(self) -> float:
        """Return the sum of env rewards in the current episode so far."""
        return self._return

    @property
    def episode_over(self) -> bool:
        """Return True after the episode ended (or before the first reset)."""
        return self._ended

    def reset(self, seed: int | None = None) -> SimState:
        """Start a new episode on the track generated from `seed` (None: continue the RNG)."""
        self._raw.reset(seed=seed)
        # track rows are (alpha, beta, x, y); the road runs along (-sin beta, cos beta).
        track = np.asarray(self._raw.track, dtype=np.float64)
        # The route is closed: its last point repeats its first (the start line), so a
        # driver following it is led all the way round instead of to a point ~7 m short.
        track = np.concatenate([track, track[:1]])
        self._waypoints = np.ascontiguousarray(track[:, 2:4])
        self._waypoint_yaws = (track[:, 1] + math.pi / 2.0 + math.pi) % (2 * math.pi) - math.pi
        if self.config.route_spacing > 0.0:
            self._waypoints = resample_route(self._waypoints, self.config.route_spacing)
            # Each point faces along the road to the next (the last as the one before it).
            step = np.diff(self._waypoints, axis=0)
            yaws = np.arctan2(step[:, 1], step[:, 0])
            self._waypoint_yaws = np.append(yaws, yaws[-1])
        self._steps = 0
        self._return = 0.0
        self._off_track_run = 0
        self._ended = False
        self._action[:] = 0.0
        on_road = self._wheels_on_road()
        self._wheel_on_road = on_road
        return self._state(0.0, False, False, '', on_road, False)

    def step(self, steer: float, throttle: float, brake: float) -> SimState:
        """Apply one control (CARLA ranges: steer [-1, 1], throttle and brake [0, 1])."""
        if self._ended:
            raise RuntimeError('episode is over: call reset() first')
        self._action[0] = finite_clamp(steer, -1.0, 1.0)
        self._action[1] = finite_clamp(throttle, 0.0, 1.0)
        self._action[2] = finite_clamp(brake, 0.0, 1.0)
        _, reward, terminated, _, info = self._raw.step(self._action)
        reward = float(reward)
        self._steps += 1
        self._return += reward
        on_road = self._wheels_on_road()
        invasion = any(was and not now
                       for was, now in zip(self._wheel_on_road, on_road, strict=True))
        self._wheel_on_road = on_road
        off_track = not any(on_road)
        self._off_track_run = self._off_track_run + 1 if off_track else 0
        reason = ''
        truncated = False
        if terminated:
            reason = 'lap_complete' if info.get('lap_finished') else 'off_playfield'
        elif 0 < self.config.max_off_track_steps <= self._off_track_run:
            terminated = True
            reason = 'off_track'
        elif 0 < self.config.max_episode_steps <= self._steps:
            truncated = True
            reason = 'time_limit'
        self._ended = terminated or truncated
        return self._state(reward, terminated, truncated, reason, on_road, invasion)

    def close(self):
        """Release the environment."""
        self._raw.close()

    def _wheels_on_road(self) -> list[bool]:
        """Return, per wheel, whether it touches at least one road tile."""
        return [bool(wheel.tiles) for wheel in self._raw.car.wheels]

    def _render_frame(self) -> np.ndarray:
        """Render the camera view into the reused BGRA buffer."""
        rgb = self._raw.render()
        if self._resize:
            rgb = cv2.resize(rgb, (self.config.image_width, self.config.image_height),
                             interpolation=cv2.INTER_AREA)
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA, dst=self._bgra)
        return self._bgra

    def _state(self, reward, terminated, truncated, reason, on_road, invasion) -> SimState:
        """Collect the current pose, velocities and frame into a SimState."""
        hull = self._raw.car.hull
        yaw = wrap_angle(hull.angle + math.pi / 2.0)
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        vel_x = hull.linearVelocity[0] * self._time_scale
        vel_y = hull.linearVelocity[1] * self._time_scale
        wheels_off = sum(1 for on in on_road if not on)
        return SimState(
            frame=self._render_frame() if self.config.render_camera else self._bgra,
            x=float(hull.position[0]),
            y=float(hull.position[1]),
            yaw=yaw,
            vx=cos_yaw * vel_x + sin_yaw * vel_y,
            vy=-sin_yaw * vel_x + cos_yaw * vel_y,
            yaw_rate=float(hull.angularVelocity) * self._time_scale,
            speed=math.hypot(vel_x, vel_y),
            wheels_off_track=wheels_off,
            off_track=wheels_off == 4,
            lane_invasion=invasion,
            reward=reward,
            episode_return=self._return,
            steps=self._steps,
            terminated=terminated,
            truncated=truncated,
            reason=reason,
            control=(float(self._action[0]), float(self._action[1]), float(self._action[2])),
        )


def finite_clamp(value: float, low: float, high: float) -> float:
    """Clip `value` to [low, high], mapping NaN to 0 so a bad command cannot poison Box2D."""
    value = float(value)
    if math.isnan(value):
        return 0.0
    return clamp(value, low, high)
