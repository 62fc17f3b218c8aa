"""The av_td3_system reward: efficiency, lane keeping, comfort, safety and progress terms.

Pure functions of two consecutive vehicle states and the events between them (no ROS), each
term returned separately for logging. The original's proximity and time-to-collision terms
need other actors, which a camera-only graph does not carry; they are left out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from av_td3_ros.policy.features import clamp


@dataclass(frozen=True)
class RewardConfig:
    """Weights and thresholds of the reward terms (defaults: av_td3_system)."""

    efficiency_weight: float = 2.0
    """Weight of v*cos(heading error)/target_speed (+bonus when moving)."""
    lane_keeping_weight: float = 2.0
    """Weight of the lateral/heading tracking term."""
    comfort_weight: float = 1.0
    """Weight of the jerk penalty."""
    safety_weight: float = 1.0
    """Weight of collision / off-road / lane-invasion penalties."""
    progress_weight: float = 3.0
    """Weight of route progress."""
    target_speed: float = 8.33
    """Speed (m/s) at which the efficiency term reaches 1 (30 km/h)."""
    moving_bonus: float = 0.15
    """Efficiency bonus when faster than moving_speed."""
    moving_speed: float = 0.5
    """m/s above which the moving bonus is paid."""
    lateral_tolerance: float = 2.5
    """Lateral deviation (m) normalising lane keeping; off-road above it. 2.5 fits a CARLA
    lane; the stand-in's wider road uses `STAND_IN_REWARD`."""
    heading_tolerance: float = math.pi / 2
    """Heading error (rad) normalising lane keeping."""
    jerk_scale: float = 5.0
    """Jerk (m/s^3) at which the comfort term crosses zero."""
    collision_penalties: tuple = (-5.0, -25.0, -100.0)
    """Collision penalty below 2 m/s, below 5 m/s, and at or above 5 m/s."""
    off_road_penalty: float = -20.0
    """Penalty when the vehicle leaves the road (lateral deviation above tolerance)."""
    lane_invasion_penalty: float = -10.0
    """Penalty per step with a lane invasion event."""
    progress_distance_scale: float = 0.5
    """Reward per metre of decrease in the distance to the goal."""
    waypoint_bonus: float = 1.0
    """Reward per route waypoint passed."""
    goal_bonus: float = 100.0
    """Reward for reaching the end of the route."""

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for logs and checkpoints)."""
        return asdict(self)


STAND_IN_LATERAL_TOLERANCE = 6.5
"""Lateral tolerance (m) on the stand-in: its road is 13.3 m wide."""

STAND_IN_GAMMA = 0.998
"""Discount for learning on the stand-in (as config/trainer_sim.yaml): its 500-frame horizon
sees where too much speed ends; at 0.99 a fast crash can outscore a lap."""
STAND_IN_REWARD = RewardConfig(lateral_tolerance=STAND_IN_LATERAL_TOLERANCE)
"""The reward settings for the CarRacing stand-in (CARLA's 2.5 m would pay the off-road
penalty on its road)."""


@dataclass(frozen=True)
class VehicleState:
    """What the reward needs to know about the vehicle at one camera frame."""

    time: float
    """Stamp, s."""
    speed: float
    """m/s."""
    yaw_rate: float
    """rad/s."""
    lateral_deviation: float
    """m from the route."""
    heading_error: float
    """rad."""
    distance_to_goal: float
    """Remaining route length, m."""
    segment: int
    """Index of the route segment the vehicle is on."""


@dataclass(frozen=True)
class StepEvents:
    """Events reported between two frames."""

    collision: bool = False
    lane_invasion: bool = False
    goal_reached: bool = False


def efficiency(state: VehicleState, config: RewardConfig) -> float:
    """Reward forward speed along the route, up to the target speed."""
    value = state.speed * math.cos(state.heading_error) / config.target_speed
    if state.speed > config.moving_speed:
        value += config.moving_bonus
    return clamp(value, -1.0, 1.0)


def lane_keeping(state: VehicleState, lane_invasion: bool, config: RewardConfig) -> float:
    """Reward small lateral and heading errors, scaled in as the vehicle speeds up."""
    if lane_invasion:
        return -1.0
    if state.speed < 0.1:
        return 0.0
    lateral = min(abs(state.lateral_deviation) / config.lateral_tolerance, 1.0)
    heading = min(abs(state.heading_error) / config.heading_tolerance, 1.0)
    value = ((1.0 - 0.7 * lateral) + (1.0 - 0.3 * heading)) / 2.0 - 0.5
    return clamp(value * min((state.speed - 0.1) / 2.9, 1.0), -1.0, 1.0)


def comfort(jerk_long: float, jerk_lat: float, config: RewardConfig) -> float:
    """Reward smooth driving: small longitudinal and lateral jerk."""
    x = math.hypot(jerk_long, jerk_lat) / config.jerk_scale
    value = (1.0 - x) * 0.3 if x <= 1.0 else -0.3 * (x - 1.0) ** 2
    return clamp(value, -1.0, 0.3)


def safety(state: VehicleState, events: StepEvents, config: RewardConfig) -> float:
    """Penalise collisions (by speed), leaving the road and lane invasions."""
    value = 0.0
    if events.collision:
        low, mid, high = config.collision_penalties
        value += low if state.speed < 2.0 else mid if state.speed < 5.0 else high
    if abs(state.lateral_deviation) > config.lateral_tolerance:
        value += config.off_road_penalty
    if events.lane_invasion:
        value += config.lane_invasion_penalty
    return value


def progress(previous: VehicleState, state: VehicleState, events: StepEvents,
             config: RewardConfig) -> float:
    """Reward getting closer to the goal, passing waypoints and arriving."""
    value = config.progress_distance_scale * (previous.distance_to_goal - state.distance_to_goal)
    value += config.waypoint_bonus * max(state.segment - previous.segment, 0)
    if events.goal_reached:
        value += config.goal_bonus
    return clamp(value, -10.0, 110.0)


class RewardFunction:
    """Stateful reward: remembers accelerations to compute jerk between frames."""

    def __init__(self, config: RewardConfig = RewardConfig()):
        """Start with no acceleration history."""
        self.config = config
        self._accel = None  # (longitudinal, lateral) at the previous step

    def reset(self):
        """Forget the previous episode's accelerations."""
        self._accel = None

    def __call__(self, previous: VehicleState, state: VehicleState,
                 events: StepEvents) -> tuple[float, dict[str, float]]:
        """Return (weighted total, {term: unweighted value}) for the step previous -> state."""
        config = self.config
        dt = max(state.time - previous.time, 1e-3)
        accel = ((state.speed - previous.speed) / dt, state.speed * state.yaw_rate)
        if self._accel is None:
            jerk = (0.0, 0.0)
        else:
            jerk = ((accel[0] - self._accel[0]) / dt, (accel[1] - self._accel[1]) / dt)
        self._accel = accel
        terms = {
            'efficiency': efficiency(state, config),
            'lane_keeping': lane_keeping(state, events.lane_invasion, config),
            'comfort': comfort(*jerk, config),
            'safety': safety(state, events, config),
            'progress': progress(previous, state, events, config),
        }
        total = (config.efficiency_weight * terms['efficiency']
                 + config.lane_keeping_weight * terms['lane_keeping']
                 + config.comfort_weight * terms['comfort']
                 + config.safety_weight * terms['safety']
                 + config.progress_weight * terms['progress'])
        return total, terms
