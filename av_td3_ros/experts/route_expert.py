"""A route-following expert driver: pure pursuit with curvature-limited speed (no ROS imports).

The expert sees exactly what the kinematic vector of `features.py` holds - speed, lateral
deviation, heading error and the next route waypoints in the vehicle frame - so it labels any
stored observation (a replay-buffer row, a recorded bag) without the map, and drives any
vehicle that has a route. Its action is the policy's: (steer, accel) in [-1, 1]^2, steer
positive to the right (CARLA), accel > 0 throttle, < 0 brake (`control.action_to_control`).

How it drives:

* Steering (pure pursuit): aim at the first route waypoint at least
  max(`lookahead_min`, `lookahead_base` + `lookahead_gain` * speed) metres away and steer the
  front wheels for the circular arc through it (bicycle model, `wheelbase`), scaled by the
  wheel angle at full lock.
* Speed: along the next `preview_distance` metres of route, each waypoint's curvature
  kappa allows v = sqrt(`lateral_accel` / kappa); the target speed is the lowest of those
  after braking there at `braking_decel` (v_now^2 <= v^2 + 2 * decel * distance), and at most
  `max_speed`. A proportional controller turns the speed error into throttle or brake.
* Recovery: beyond `off_road_deviation` metres from the route the target speed drops to
  `recovery_speed` and the throttle to `recovery_throttle`, so the car steers back on without
  spinning its wheels on the grass.

Defaults suit the CarRacing stand-in (13.3 m road, speeds in m/s of sim time at 0.05 s steps):
tuned on tracks 100-119 (912 +- 16), it returned 916.0 +- 6.0 on tracks 7000-7009 with all
ten laps completed (docs/imitation.md). `config/expert_carla.yaml` holds CARLA's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from av_td3_ros.policy.features import ROUTE_START_HINT, FeatureConfig, Pose2D, kinematic_vector
from av_td3_ros.validation import check_at_least, check_range


@dataclass(frozen=True)
class ExpertConfig:
    """Gains and limits of the route-following expert (defaults: the CarRacing stand-in)."""

    lookahead_min: float = 12.0
    """Shortest pure-pursuit lookahead, m."""
    lookahead_base: float = 6.0
    """Lookahead at standstill before the minimum applies, m."""
    lookahead_gain: float = 0.3
    """Extra lookahead per m/s of speed, s."""
    wheelbase: float = 3.24
    """Axle distance of the bicycle model, m (the stand-in's `sim_env.WHEELBASE`; not
    imported, so a driver does not load the simulator; a test keeps the two equal)."""
    max_wheel_angle: float = 0.4
    """Front wheel angle at |steer| = 1, rad (the stand-in's `sim_env.MAX_WHEEL_ANGLE`)."""
    preview_distance: float = 60.0
    """Route length ahead whose curvature limits the speed, m."""
    curvature_window: float = 6.0
    """Arc length over which a waypoint's curvature is measured, m: the heading change
    between the chords to the points half of it behind and ahead, so a route sampled every
    metre curves as much as the same road sampled every 3.5 m (with neighbours at least half
    of it apart, as on the stand-in, those are the neighbouring points)."""
    lateral_accel: float = 15.0
    """Lateral acceleration allowed in curves, m/s^2 (v = sqrt(a / kappa))."""
    braking_decel: float = 10.0
    """Deceleration assumed when planning to slow down before a curve, m/s^2."""
    max_speed: float = 35.0
    """Target speed on straights, m/s."""
    speed_gain: float = 0.15
    """Throttle per m/s below the target speed."""
    brake_gain: float = 1.0
    """Brake per m/s above the target speed (braking must be prompt to make the corner)."""
    max_brake: float = 0.8
    """Strongest brake command (CarRacing locks its wheels near 1.0)."""
    off_road_deviation: float = 6.0
    """Distance from the route beyond which the expert recovers, m (road half-width 6.65)."""
    recovery_speed: float = 12.0
    """Target speed while recovering, m/s."""
    recovery_throttle: float = 0.3
    """Throttle cap while recovering."""

    def __post_init__(self):
        """Refuse settings the controller cannot use, naming the field."""
        check_at_least(self, 0.0, 'lookahead_min', 'lookahead_base', 'lookahead_gain',
                       'preview_distance', 'speed_gain', 'brake_gain', 'off_road_deviation',
                       'recovery_speed')
        for name in ('wheelbase', 'max_wheel_angle', 'curvature_window', 'lateral_accel',
                     'braking_decel', 'max_speed'):
            check_range(name, getattr(self, name), 0.0, low_open=True)
        check_range('max_brake', self.max_brake, 0.0, 1.0)
        check_range('recovery_throttle', self.recovery_throttle, 0.0, 1.0)

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for logs and model cards)."""
        return asdict(self)


def route_points(kinematics: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """Return the waypoints of a kinematic vector as (N, 2) metres in the vehicle frame."""
    return (np.asarray(kinematics[3:features.size], np.float64).reshape(-1, 2)
            * features.waypoint_scale)


def path_curvatures(points: np.ndarray, window: float = ExpertConfig.curvature_window
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Return (distance from the vehicle along the path, |curvature|) at each inner waypoint.

    Curvature is the heading change between the chords to the points `window` / 2 of arc
    length behind and ahead, divided by the arc between those points: measured by length,
    not by point count, it is the same for a road sampled every metre or every few metres,
    and it smooths a polyline's jitter.
    """
    if len(points) < 3:
        return np.zeros(0), np.zeros(0)
    segments = np.diff(points, axis=0)
    lengths = np.hypot(segments[:, 0], segments[:, 1])
    along = np.concatenate(([0.0], np.cumsum(lengths)))
    inner = np.arange(1, len(points) - 1)
    half = window / 2.0
    behind = np.minimum(np.searchsorted(along, along[inner] - half, side='right') - 1,
                        inner - 1).clip(0)
    ahead = np.maximum(np.searchsorted(along, along[inner] + half, side='left'), inner + 1)
    ahead = ahead.clip(max=len(points) - 1)
    back, front = points[inner] - points[behind], points[ahead] - points[inner]
    turn = np.abs((np.arctan2(front[:, 1], front[:, 0]) - np.arctan2(back[:, 1], back[:, 0])
                   + math.pi) % (2.0 * math.pi) - math.pi)
    back_length = along[inner] - along[behind]
    front_length = along[ahead] - along[inner]
    # A repeated point (the route's end) has no heading: it neither curves nor limits speed.
    turn[(back_length < 1e-6) | (front_length < 1e-6)] = 0.0
    span = np.maximum(back_length + front_length, 1e-6)
    distance = np.hypot(points[0, 0], points[0, 1]) + along
    return distance[1:-1], 2.0 * turn / span


def target_speed(points: np.ndarray, config: ExpertConfig) -> float:
    """Return the fastest speed from which every curve in the preview can still be taken."""
    distance, curvature = path_curvatures(points, config.curvature_window)
    wanted = config.max_speed
    for dist, kappa in zip(distance, curvature, strict=True):
        if dist > config.preview_distance:
            break
        if kappa > 1e-6:
            corner = math.sqrt(config.lateral_accel / kappa)
            wanted = min(wanted, math.sqrt(corner * corner + 2.0 * config.braking_decel * dist))
    return wanted


def pursuit_steer(points: np.ndarray, speed: float, config: ExpertConfig) -> float:
    """Return the steer command (+ right) of the arc to the lookahead waypoint."""
    lookahead = max(config.lookahead_min, config.lookahead_base
                    + config.lookahead_gain * max(speed, 0.0))
    distances = np.hypot(points[:, 0], points[:, 1])
    beyond = np.nonzero(distances >= lookahead)[0]
    ahead, left = points[beyond[0]] if len(beyond) else points[-1]
    dist_sq = ahead * ahead + left * left
    if dist_sq < 1e-6:
        return 0.0
    curvature = 2.0 * left / dist_sq
    wheel_angle = math.atan(config.wheelbase * curvature)
    # A left turn (positive curvature) needs a negative (left) CARLA steer.
    return min(max(-wheel_angle / config.max_wheel_angle, -1.0), 1.0)


def expert_action_from_kinematics(kinematics: np.ndarray,
                                  features: FeatureConfig = FeatureConfig(),
                                  config: ExpertConfig = ExpertConfig()) -> np.ndarray:
    """Return the expert's action (steer, accel) for one full (route-profile) kinematic vector.

    The vector must carry the route (a camera-profile network masks it, the stored vector
    does not); with no route in it (all waypoints zero) the expert brakes.
    """
    points = route_points(kinematics, features)
    speed = float(kinematics[0]) * features.speed_scale
    if not np.any(points):
        return np.array([0.0, -1.0], np.float32)
    lateral = float(kinematics[1]) * features.lateral_scale
    steer = pursuit_steer(points, speed, config)
    wanted = target_speed(points, config)
    throttle_cap = 1.0
    if abs(lateral) > config.off_road_deviation:
        wanted = min(wanted, config.recovery_speed)
        throttle_cap = config.recovery_throttle
    error = wanted - speed
    accel = (config.speed_gain if error >= 0.0 else config.brake_gain) * error
    accel = min(max(accel, -config.max_brake), throttle_cap)
    return np.array([steer, accel], np.float32)


def expert_actions(kinematics: np.ndarray, features: FeatureConfig = FeatureConfig(),
                   config: ExpertConfig = ExpertConfig()) -> np.ndarray:
    """Label a batch (B, K) of stored kinematic vectors with the expert's actions (B, 2)."""
    rows = np.asarray(kinematics)
    return np.stack([expert_action_from_kinematics(row, features, config) for row in rows]) \
        if len(rows) else np.zeros((0, 2), np.float32)


class RouteExpert:
    """The expert on a pose and a route, remembering where along the route the car was."""

    def __init__(self, features: FeatureConfig = FeatureConfig(),
                 config: ExpertConfig = ExpertConfig()):
        """Start at the route's start."""
        self.features = features
        self.config = config
        self.kinematics = np.zeros(features.size, np.float32)
        self._hint = ROUTE_START_HINT

    def reset(self):
        """Forget the route position (a new episode or a new route): look at its start."""
        self._hint = ROUTE_START_HINT

    def act(self, pose: Pose2D, speed: float, route: np.ndarray | None) -> np.ndarray:
        """Return (steer, accel) for the vehicle at `pose`; brake without a route."""
        if route is None or len(route) < 2:
            return np.array([0.0, -1.0], np.float32)
        _, state = kinematic_vector(pose, speed, route, self.features, out=self.kinematics,
                                    hint=self._hint)
        self._hint = state.segment
        return expert_action_from_kinematics(self.kinematics, self.features, self.config)
