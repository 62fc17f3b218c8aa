# Test if routes at any spacing describe the same road: resampling by arc length, and the
# route expert's curvature measured by length rather than by point count.
import math

import numpy as np
import pytest

from av_td3_ros.experts.route_expert import ExpertConfig, path_curvatures, target_speed
from av_td3_ros.policy.features import MAX_RESAMPLED_POINTS, resample_route


def arc(radius: float, spacing: float, length: float = 120.0) -> np.ndarray:
    """Return points every `spacing` m along a left-hand circle of `radius` from the origin."""
    angles = np.arange(0.0, length, spacing) / radius
    return np.column_stack([radius * np.sin(angles), radius * (1.0 - np.cos(angles))])


def test_resampling_keeps_the_ends_and_spaces_points_by_arc_length():
    route = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 0.0], [10.0, 7.5]])  # a repeat inside
    points = resample_route(route, 2.0)
    np.testing.assert_allclose(points[0], route[0])
    np.testing.assert_allclose(points[-1], route[-1])
    steps = np.hypot(*np.diff(points, axis=0).T)
    # Every step is the spacing along the polyline; only the last may be shorter, and the
    # one across the corner is a chord of the 2 m of road around it.
    assert np.allclose(steps[:4], 2.0) and np.allclose(steps[6:-1], 2.0)
    assert 0.0 < steps[-1] <= 2.0 + 1e-9
    assert len(points) == math.ceil(17.5 / 2.0) + 1
    # A spacing longer than the route leaves its two ends.
    np.testing.assert_allclose(resample_route(route, 100.0), [[0.0, 0.0], [10.0, 7.5]])


@pytest.mark.parametrize('route, match', [
    (np.array([[0.0, 0.0]]), 'two distinct'), (np.array([[0.0, 0.0], [np.nan, 1.0]]), 'finite'),
    (np.array([[0.0, 0.0], [1e7, 0.0], [1e7, 1e7]]), 'more than')])
def test_a_route_that_cannot_be_resampled_is_refused_by_name(route, match):
    with pytest.raises(ValueError, match=match):
        resample_route(route, 0.05)
    assert MAX_RESAMPLED_POINTS >= 100_000  # 100 km at 1 m still fits
    with pytest.raises(ValueError, match='spacing'):
        resample_route(np.array([[0.0, 0.0], [1.0, 0.0]]), 0.0)


@pytest.mark.parametrize('spacing', [1.0, 2.0, 3.5])
def test_curvature_and_corner_speed_do_not_depend_on_the_spacing(spacing):
    radius = 40.0
    points = arc(radius, spacing)
    _, curvature = path_curvatures(points)
    assert np.allclose(curvature, 1.0 / radius, rtol=0.02)
    config = ExpertConfig()
    corner = math.sqrt(config.lateral_accel * radius)
    # The nearest inner waypoint, `spacing` ahead, limits the speed: its corner speed plus
    # what braking over that distance allows.
    allowed = math.sqrt(corner ** 2 + 2.0 * config.braking_decel * spacing)
    assert target_speed(points, config) == pytest.approx(allowed, rel=0.02)


def test_a_polyline_corner_resampled_finely_keeps_its_curvature():
    # A 3.5 m polyline resampled every metre puts the whole turn of a vertex between two
    # 1 m steps; measured over the window it is the turn over the same arc as before.
    coarse = arc(30.0, 3.5)
    fine = resample_route(coarse, 1.0)
    _, coarse_curvature = path_curvatures(coarse)
    _, fine_curvature = path_curvatures(fine)
    assert fine_curvature.max() == pytest.approx(coarse_curvature.max(), rel=0.25)
    assert target_speed(fine, ExpertConfig()) == pytest.approx(
        target_speed(coarse, ExpertConfig()), rel=0.1)
    # Counted by points instead (a 2-point window), the fine route's vertices would curve
    # 3.5 times too much.
    _, by_points = path_curvatures(fine, window=1.0)
    assert by_points.max() > 2.5 * coarse_curvature.max()


@pytest.mark.parametrize('spacing', [1.0, 2.0])
def test_the_stand_in_publishes_its_route_at_a_spacing_and_the_expert_still_laps(spacing):
    from av_td3_ros.sim.evaluation import evaluate_expert
    from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig

    config = SimEnvConfig(render_camera=False, route_spacing=spacing)
    env = SimEnv(config)
    try:
        env.reset(8311)  # a track no recipe, figure or other test uses
        steps = np.hypot(*np.diff(env.waypoints, axis=0).T)
        # Chords of the polyline: the spacing along the road, a little less across a vertex.
        assert np.median(steps) == pytest.approx(spacing) and steps.max() <= spacing + 1e-9
        step = np.diff(env.waypoints, axis=0)
        np.testing.assert_allclose(env.waypoint_yaws[:-1], np.arctan2(step[:, 1], step[:, 0]))
    finally:
        env.close()
    result, = evaluate_expert([8311], env_config=config)
    assert result.lap_complete and result.episode_return > 880.0
