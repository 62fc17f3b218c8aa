"""Kinematic features of the ego vehicle relative to its route (no ROS imports).

The vector follows av_td3_system: speed / 30, lateral deviation / 3.5, heading error / pi,
then the next N route waypoints as (x, y) in the vehicle frame / 50 (N = 25 by default), i.e.
3 + 2N values. Poses use the ROS convention (map frame, x forward / y left in the vehicle frame,
yaw counter-clockwise).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from av_td3_ros.validation import check_range


@dataclass(frozen=True)
class FeatureConfig:
    """Layout and normalisation of the kinematic vector (stored in every checkpoint)."""

    n_waypoints: int = 25
    """Route waypoints ahead of the vehicle in the vector. The distance they cover is the
    route's spacing times this: 25 are ~50 m of a CARLA route at ~2 m spacing, and 87.5 m of
    the stand-in's centre line at 3.5 m spacing (coordinates up to ~1.75 after scaling)."""
    speed_scale: float = 30.0
    """Speed divisor, m/s."""
    lateral_scale: float = 3.5
    """Lateral deviation divisor, m (about a lane width)."""
    waypoint_scale: float = 50.0
    """Waypoint coordinate divisor, m (about the lookahead; farther points exceed 1)."""

    @property
    def size(self) -> int:
        """Return the vector length 3 + 2 * n_waypoints."""
        return 3 + 2 * self.n_waypoints

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoint metadata)."""
        return asdict(self)


@dataclass(frozen=True)
class Pose2D:
    """Planar pose of the vehicle in the map frame."""

    x: float
    y: float
    yaw: float


@dataclass(frozen=True)
class RouteState:
    """Where the vehicle is along its route."""

    lateral_deviation: float
    """Signed distance to the route, m (positive: vehicle left of the route)."""
    heading_error: float
    """Vehicle yaw minus route direction, wrapped to [-pi, pi]."""
    segment: int
    """Index of the route segment the vehicle is nearest to."""
    distance_to_goal: float
    """Remaining route length from the projection of the vehicle, m."""


MAX_COORDINATE = 1e7
"""Largest |x| or |y| (m) accepted in a route or a pose: 10,000 km is beyond any map, and the
squared distances of larger values overflow float64 arithmetic into inf and NaN features."""
MAX_SPEED = 1e3
"""Largest |speed| (m/s) accepted from odometry: no vehicle drives at 3,600 km/h."""
MIN_SEGMENT_LENGTH2 = 1e-12
"""Squared length (m^2) below which a route segment has no direction (a repeated point)."""


def route_problem(route) -> str | None:
    """Return why a route array cannot be driven along, or None when it can.

    A usable route is an (M, 2) array of finite coordinates within MAX_COORDINATE with at
    least two distinct points (one segment with a direction). Callers treat a route with a
    problem as no route: the driver brakes with the reason, the trainer labels no features.
    """
    route = np.asarray(route)
    if route.ndim != 2 or route.shape[1] != 2:
        return f'route must be (M, 2) points, got shape {route.shape}'
    if not np.issubdtype(route.dtype, np.number):
        return f'route has non-numeric points ({route.dtype})'
    if not np.isfinite(route).all():
        return 'route has non-finite values'
    if (np.abs(route) > MAX_COORDINATE).any():
        return f'route has coordinates beyond {MAX_COORDINATE:g} m'
    if route.shape[0] < 2:
        return 'route has fewer than two distinct points'
    seg = np.diff(route, axis=0)
    if not ((seg * seg).sum(axis=1) > MIN_SEGMENT_LENGTH2).any():
        return 'route has fewer than two distinct points'
    return None


MAX_RESAMPLED_POINTS = 200_000
"""Most points a resampled route may have (2,000 km at 1 m): a route whose resampling would
need more is refused instead of filling memory."""


def resample_route(route: np.ndarray, spacing: float) -> np.ndarray:
    """Return the route polyline (M, 2) resampled every `spacing` metres of arc length.

    The kinematic vector's N waypoints then cover N * spacing metres whatever the planner's
    spacing (CARLA's waypoint publisher: 1 m; the stand-in: 3.5 m). The first and the last
    point stay where they were. Raises ValueError for a route that `route_problem` refuses or
    that would need more than MAX_RESAMPLED_POINTS points.
    """
    check_range('spacing', spacing, 0.0, low_open=True)
    problem = route_problem(route)
    if problem is not None:
        raise ValueError(problem)
    points = np.asarray(route, np.float64)
    lengths = np.hypot(*np.diff(points, axis=0).T)
    distinct = lengths * lengths > MIN_SEGMENT_LENGTH2
    points = points[np.concatenate(([True], distinct))]
    along = np.concatenate(([0.0], np.cumsum(lengths[distinct])))
    if along[-1] / spacing > MAX_RESAMPLED_POINTS:
        raise ValueError(f'route of {along[-1]:.0f} m needs more than {MAX_RESAMPLED_POINTS} '
                         f'points at {spacing:g} m')
    stations = np.append(np.arange(0.0, along[-1], spacing), along[-1])
    if stations[-1] - stations[-2] < 1e-6:  # the last station is the end already
        stations = stations[:-1]
    return np.column_stack([np.interp(stations, along, points[:, 0]),
                            np.interp(stations, along, points[:, 1])])


def odometry_problem(x: float, y: float, yaw: float, speed: float) -> str | None:
    """Return why an odometry sample (planar pose and speed) is unusable, or None when it is.

    The values are those `ros_conversions.pose_from_odometry` and `speed_from_odometry`
    return: all must be finite, the position within MAX_COORDINATE and |speed| within
    MAX_SPEED.
    """
    values = {'x': x, 'y': y, 'yaw': yaw, 'speed': speed}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        return f'odometry has non-finite {", ".join(bad)}'
    if abs(x) > MAX_COORDINATE or abs(y) > MAX_COORDINATE:
        return f'odometry position beyond {MAX_COORDINATE:g} m'
    if abs(speed) > MAX_SPEED:
        return f'odometry speed {speed:g} m/s beyond {MAX_SPEED:g}'
    return None


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Return the yaw (rotation about z) of a quaternion; NaN when it is no rotation.

    A quaternion with a non-finite component or a zero norm (an unset orientation) has no
    yaw; NaN makes `odometry_problem` refuse the sample instead of reading a made-up angle
    (atan2 turns inf components into finite angles).
    """
    norm2 = x * x + y * y + z * z + w * w
    if not math.isfinite(norm2) or norm2 < 1e-12:
        return math.nan
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def wrap_angle(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def clamp(value: float, low: float, high: float) -> float:
    """Limit `value` to [low, high] (NaN stays NaN: callers that must not see one check)."""
    return min(max(value, low), high)


SEGMENTS_BEHIND = 5
"""With a previous segment as hint, search this many segments back..."""
SEGMENTS_AHEAD = 40
"""...and this many ahead (80 m at 2 m spacing, 140 m at the stand-in's 3.5 m: either is far
more than one frame of driving)."""
LOST_DISTANCE = 10.0
"""Beyond this distance (m) from the hinted window the vehicle is re-found on the whole route."""
ROUTE_START_HINT = 0
"""The hint for an episode's first frame and a new route's: routes start at the vehicle (the
CARLA planner's from the ego's location, the stand-in's at the start line). On a closed
track the start line is also the finish, and an unhinted search puts a car a few decimetres
behind the line on the last segment: the route would be complete before the first step
(measured: 5 of 40 stand-in tracks). Farther than LOST_DISTANCE from the route's start, the
whole route is searched as usual."""


def route_state(pose: Pose2D, route: np.ndarray, hint: int | None = None) -> RouteState:
    """Project the vehicle on the route polyline (M, 2) and measure how it tracks it.

    `hint` is the segment found for the previous frame: the search then stays near it, so a
    route that passes close to itself (a closed track's start and end, a figure eight) never
    makes the vehicle jump along the route - such a jump would pay the progress reward for
    hundreds of metres never driven.
    """
    if route.ndim != 2 or route.shape[0] < 2 or route.shape[1] != 2:
        raise ValueError(f'route must be (M >= 2, 2) points, got shape {route.shape}')
    starts, ends = route[:-1], route[1:]
    seg = ends - starts
    raw_len2 = (seg * seg).sum(axis=1)
    # Repeated points make zero-length segments with no direction: never pick those.
    valid = raw_len2 > MIN_SEGMENT_LENGTH2
    if not valid.any():
        raise ValueError('route has no two distinct points')
    seg_len2 = np.where(valid, raw_len2, 1.0)
    rel = np.array([pose.x, pose.y]) - starts
    t = np.clip((rel * seg).sum(axis=1) / seg_len2, 0.0, 1.0)
    nearest = starts + seg * t[:, None]
    dist2 = ((np.array([pose.x, pose.y]) - nearest) ** 2).sum(axis=1)
    dist2[~valid] = np.inf
    i = int(np.argmin(dist2))
    if hint is not None:
        low = max(0, min(hint, len(dist2) - 1) - SEGMENTS_BEHIND)
        local = low + int(np.argmin(dist2[low:hint + SEGMENTS_AHEAD + 1]))
        if dist2[local] <= LOST_DISTANCE ** 2:
            i = local
    direction = math.atan2(seg[i, 1], seg[i, 0])
    # Sign by the cross product: positive when the vehicle is to the left of the route.
    cross = seg[i, 0] * rel[i, 1] - seg[i, 1] * rel[i, 0]
    lateral = math.copysign(math.sqrt(dist2[i]), cross) if dist2[i] > 0 else 0.0
    seg_lengths = np.sqrt(raw_len2)
    remaining = float(seg_lengths[i] * (1.0 - t[i]) + seg_lengths[i + 1:].sum())
    return RouteState(lateral, wrap_angle(pose.yaw - direction), i, remaining)


def waypoints_in_vehicle_frame(pose: Pose2D, route: np.ndarray, first: int,
                               count: int) -> np.ndarray:
    """Return `count` route points from index `first` as (x, y) in the vehicle frame.

    Past the end of the route the last point repeats, so the vector keeps its length and
    says "the route ends here".
    """
    idx = np.minimum(np.arange(first, first + count), route.shape[0] - 1)
    rel = route[idx] - np.array([pose.x, pose.y])
    cos_yaw, sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
    local = np.empty((count, 2))
    local[:, 0] = cos_yaw * rel[:, 0] + sin_yaw * rel[:, 1]
    local[:, 1] = -sin_yaw * rel[:, 0] + cos_yaw * rel[:, 1]
    return local


def kinematic_vector(pose: Pose2D, speed: float, route: np.ndarray | None,
                     config: FeatureConfig = FeatureConfig(),
                     out: np.ndarray | None = None,
                     hint: int | None = None) -> tuple[np.ndarray, RouteState | None]:
    """Build the float32 kinematic vector; without a route only the speed term is non-zero.

    `hint`: the previous frame's route segment (see `route_state`).
    """
    vec = np.zeros(config.size, np.float32) if out is None else out
    vec.fill(0.0)
    vec[0] = speed / config.speed_scale
    if route is None or len(route) < 2:
        return vec, None
    state = route_state(pose, route, hint)
    vec[1] = state.lateral_deviation / config.lateral_scale
    vec[2] = state.heading_error / math.pi
    ahead = waypoints_in_vehicle_frame(pose, route, state.segment + 1, config.n_waypoints)
    vec[3:] = (ahead / config.waypoint_scale).ravel()
    return vec, state
