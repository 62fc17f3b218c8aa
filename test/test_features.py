"""Tests for the kinematic feature vector (speed, route tracking, waypoints)."""
import math

import numpy as np
import pytest
from helpers import straight_route

from av_td3_ros.policy.features import (
    ROUTE_START_HINT,
    FeatureConfig,
    Pose2D,
    kinematic_vector,
    route_state,
    waypoints_in_vehicle_frame,
    wrap_angle,
    yaw_from_quaternion,
)


def quaternion_from_euler(roll, pitch, yaw):
    """Return (x, y, z, w) for intrinsic Z-Y-X (yaw, pitch, roll) angles."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy)


# --- layout ------------------------------------------------------------------------------------

def test_vector_layout_is_3_plus_2n():
    assert FeatureConfig().size == 53
    assert FeatureConfig(n_waypoints=10).size == 23
    vec, state = kinematic_vector(Pose2D(0, 0, 0), 3.0, straight_route())
    assert vec.shape == (53,) and vec.dtype == np.float32
    assert state is not None
    vec, _ = kinematic_vector(Pose2D(0, 0, 0), 3.0, straight_route(),
                              FeatureConfig(n_waypoints=10))
    assert vec.shape == (23,)


def test_speed_is_divided_by_30():
    vec, _ = kinematic_vector(Pose2D(5, 0, 0), 15.0, straight_route())
    assert vec[0] == pytest.approx(0.5)
    vec, _ = kinematic_vector(Pose2D(5, 0, 0), 15.0, straight_route(),
                              FeatureConfig(speed_scale=10.0))
    assert vec[0] == pytest.approx(1.5)


def test_without_route_only_speed_is_set():
    for route in (None, np.zeros((0, 2)), np.array([[1.0, 2.0]])):
        vec, state = kinematic_vector(Pose2D(3, 4, 1), 6.0, route)
        assert state is None
        assert vec[0] == pytest.approx(0.2)
        assert (vec[1:] == 0).all()


def test_out_buffer_is_reused_and_cleared():
    out = np.full(53, 7.0, np.float32)
    vec, _ = kinematic_vector(Pose2D(10, 1, 0), 3.0, straight_route(), out=out)
    assert vec is out
    vec, _ = kinematic_vector(Pose2D(10, 1, 0), 3.0, None, out=out)
    assert vec is out
    assert (out[1:] == 0).all()


# --- lateral deviation ------------------------------------------------------------------------

@pytest.mark.parametrize('offset', [1.75, -1.75, 0.35, 3.5])
def test_signed_lateral_deviation_over_3_5(offset):
    # Route along +x: +y is to the left of the route.
    vec, state = kinematic_vector(Pose2D(11.0, offset, 0.0), 5.0, straight_route())
    assert state.lateral_deviation == pytest.approx(offset)
    assert vec[1] == pytest.approx(offset / 3.5)


def test_left_of_route_is_positive_for_any_route_direction():
    for direction in (0.0, math.pi / 2, math.pi, -2.0):
        route = straight_route(direction=direction)
        # A point 1 m to the left: rotate the route direction +90 degrees.
        left = (10 * math.cos(direction) - math.sin(direction),
                10 * math.sin(direction) + math.cos(direction))
        state = route_state(Pose2D(left[0], left[1], direction), route)
        assert state.lateral_deviation == pytest.approx(1.0), direction


def test_on_route_lateral_is_zero():
    state = route_state(Pose2D(4.0, 0.0, 0.0), straight_route())
    assert state.lateral_deviation == 0.0


def test_segment_and_distance_to_goal():
    state = route_state(Pose2D(11.0, 0.5, 0.0), straight_route(length=100.0))
    assert state.segment == 5  # between x=10 and x=12
    assert state.distance_to_goal == pytest.approx(89.0)


def test_bad_route_shape_is_refused():
    with pytest.raises(ValueError, match='route must be'):
        route_state(Pose2D(0, 0, 0), np.zeros((5, 3)))
    with pytest.raises(ValueError, match='route must be'):
        route_state(Pose2D(0, 0, 0), np.zeros((1, 2)))


# --- heading error ------------------------------------------------------------------------------

def test_heading_error_over_pi():
    vec, state = kinematic_vector(Pose2D(10, 0, 0.3), 5.0, straight_route())
    assert state.heading_error == pytest.approx(0.3)
    assert vec[2] == pytest.approx(0.3 / math.pi)


@pytest.mark.parametrize('route_dir,yaw,expected', [
    (math.pi, -math.pi + 0.1, 0.1),                          # across the +-pi seam
    (math.radians(170), math.radians(-170), math.radians(20)),
    (math.radians(-170), math.radians(170), math.radians(-20)),
    (0.0, 2 * math.pi + 0.2, 0.2),                           # yaw not normalised
    (0.0, -math.pi / 2, -math.pi / 2),
])
def test_heading_error_wraps(route_dir, yaw, expected):
    route = straight_route(direction=route_dir)
    pose = Pose2D(route[5, 0], route[5, 1], yaw)
    vec, state = kinematic_vector(pose, 5.0, route)
    assert state.heading_error == pytest.approx(expected, abs=1e-9)
    assert -1.0 <= vec[2] < 1.0
    assert vec[2] == pytest.approx(expected / math.pi, abs=1e-6)


def test_wrap_angle_range():
    assert wrap_angle(3 * math.pi) == pytest.approx(-math.pi)
    assert wrap_angle(2 * math.pi + 0.1) == pytest.approx(0.1)
    assert wrap_angle(-2 * math.pi - 0.1) == pytest.approx(-0.1)
    for angle in np.linspace(-20, 20, 81):
        wrapped = wrap_angle(float(angle))
        assert -math.pi <= wrapped < math.pi
        assert math.sin(wrapped) == pytest.approx(math.sin(angle), abs=1e-9)
        assert math.cos(wrapped) == pytest.approx(math.cos(angle), abs=1e-9)


# --- waypoints ----------------------------------------------------------------------------------

def test_vehicle_rotated_90_degrees_sees_route_along_y_straight_ahead():
    route = straight_route(direction=math.pi / 2, length=60.0)  # (0, 0), (0, 2), ... (0, 60)
    vec, state = kinematic_vector(Pose2D(0.0, 1.0, math.pi / 2), 5.0, route)
    assert state.segment == 0
    points = vec[3:].reshape(25, 2) * 50.0
    expected_x = np.arange(25) * 2.0 + 1.0  # route points (0, 2), (0, 4), ... minus y=1
    np.testing.assert_allclose(points[:, 0], expected_x, atol=1e-4)
    np.testing.assert_allclose(points[:, 1], 0.0, atol=1e-4)


def test_waypoints_left_of_vehicle_have_positive_y():
    # Vehicle facing +x, 2 m to the right of the route: the route is on its left.
    vec, _ = kinematic_vector(Pose2D(11.0, -2.0, 0.0), 5.0, straight_route())
    points = vec[3:].reshape(25, 2) * 50.0
    np.testing.assert_allclose(points[:, 1], 2.0, atol=1e-4)
    np.testing.assert_allclose(points[:, 0], np.arange(25) * 2.0 + 1.0, atol=1e-4)


def test_waypoints_in_vehicle_frame_rotation():
    route = np.array([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0]])
    local = waypoints_in_vehicle_frame(Pose2D(1.0, 1.0, math.pi / 4), route, 1, 2)
    r = math.sqrt(2.0)
    np.testing.assert_allclose(local, [[r, -r], [r, r]], atol=1e-12)


def test_waypoints_are_padded_with_the_last_point_past_route_end():
    route = straight_route(length=8.0)  # x = 0, 2, 4, 6, 8
    vec, state = kinematic_vector(Pose2D(1.0, 0.0, 0.0), 2.0, route)
    assert state.segment == 0
    points = vec[3:].reshape(25, 2) * 50.0
    expected_x = [1.0, 3.0, 5.0, 7.0] + [7.0] * 21
    np.testing.assert_allclose(points[:, 0], expected_x, atol=1e-4)
    np.testing.assert_allclose(points[:, 1], 0.0, atol=1e-6)
    assert np.isfinite(vec).all()


def test_waypoints_divided_by_50():
    vec, _ = kinematic_vector(Pose2D(0.0, 0.0, 0.0), 0.0, straight_route(length=200.0))
    assert vec[3] == pytest.approx(2.0 / 50.0)
    assert vec[3 + 2 * 24] == pytest.approx(50.0 / 50.0)  # 25th point: the 50 m lookahead


# --- quaternions --------------------------------------------------------------------------------

def test_yaw_from_identity_quaternion_is_zero():
    assert yaw_from_quaternion(0.0, 0.0, 0.0, 1.0) == 0.0


@pytest.mark.parametrize('yaw', [0.3, -0.3, math.pi / 2, -math.pi / 2, 3.0, -3.0])
def test_yaw_from_pure_z_rotation(yaw):
    q = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    assert yaw_from_quaternion(*q) == pytest.approx(yaw)
    negated = tuple(-c for c in q)  # q and -q are the same rotation
    assert yaw_from_quaternion(*negated) == pytest.approx(yaw)


def test_yaw_from_quaternion_with_roll_and_pitch():
    q = quaternion_from_euler(0.2, -0.1, 0.7)
    assert yaw_from_quaternion(*q) == pytest.approx(0.7)


def test_duplicate_route_points_do_not_change_the_route_direction():
    # Route heading +y whose first point is repeated (planners emit such duplicates); the
    # vehicle is 1 m before the start, heading along the route: the heading error is 0.
    route = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    state = route_state(Pose2D(0.0, -1.0, math.pi / 2), route)
    assert state.heading_error == pytest.approx(0.0, abs=1e-9)


def test_hint_keeps_the_vehicle_near_its_previous_segment_on_a_closed_track():
    # Test that a vehicle just behind the start of a closed loop is not teleported to the
    # loop's end (which would pay the progress reward for a lap never driven).
    angles = np.linspace(0.0, 2 * math.pi, 200, endpoint=False)
    loop = np.stack([50.0 * np.cos(angles), 50.0 * np.sin(angles)], axis=1)
    behind_start = Pose2D(50.0 - 0.1, -0.8, math.pi / 2)
    unhinted = route_state(behind_start, loop)
    hinted = route_state(behind_start, loop, hint=0)
    assert unhinted.segment > 190  # globally nearest: the loop's last segment
    assert hinted.segment == 0
    assert hinted.distance_to_goal > unhinted.distance_to_goal + 300.0
    # Far from the hinted window (lost), the whole route is searched again.
    far_away = Pose2D(loop[100, 0], loop[100, 1], 0.0)
    assert abs(route_state(far_away, loop, hint=0).segment - 100) <= 1


def test_pipeline_tracks_the_route_segment_across_frames_and_resets_it():
    from av_td3_ros.driving.pipeline import DrivingPipeline
    from av_td3_ros.policy.checkpoint import PolicySpec
    from av_td3_ros.policy.preprocessing import ImageView
    angles = np.linspace(0.0, 2 * math.pi, 200, endpoint=False)
    loop = np.stack([50.0 * np.cos(angles), 50.0 * np.sin(angles)], axis=1)
    image = ImageView('mono8', 84, 84, 84, bytes(84 * 84))
    pipeline = DrivingPipeline(PolicySpec())
    at_start = pipeline.step(image, Pose2D(50.0, 0.5, math.pi / 2), 1.0, loop)
    behind = pipeline.step(image, Pose2D(50.0 - 0.1, -0.8, math.pi / 2), 1.0, loop)
    assert at_start.route.segment == 0 and behind.route.segment == 0
    pipeline.step(image, Pose2D(50.0, -20.0, 0.0), 1.0, loop)  # lost: searched globally
    pipeline.reset_episode()
    # A new episode starts at the route's start, not at the loop's finish just behind it.
    fresh = pipeline.step(image, Pose2D(50.0 - 0.1, -0.8, math.pi / 2), 1.0, loop)
    assert fresh.route.segment == 0
    # So does a new route.
    moved = pipeline.step(image, Pose2D(50.0 - 0.1, -0.8, math.pi / 2), 1.0, loop.copy())
    assert moved.route.segment == 0


def test_the_first_frame_on_a_closed_stand_in_track_is_at_the_start_not_the_finish():
    # Track 5000 starts its car just behind the start line, nearer the route's last segment:
    # an unhinted search called the route complete before the first step. Every consumer of
    # the route (trainer's assembler, gym env, expert) starts at the route's start.
    from av_td3_ros.experts.route_expert import RouteExpert
    from av_td3_ros.sim.evaluation import pose_of
    from av_td3_ros.sim.gym_env import SimGymEnv
    from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig
    from av_td3_ros.task.reward import RewardConfig
    from av_td3_ros.task.transitions import EpisodeConfig, TransitionAssembler
    env = SimEnv(SimEnvConfig(render_camera=False))
    try:
        state = env.reset(seed=5000)
        pose, route = pose_of(state), env.waypoints
        assert route_state(pose, route).distance_to_goal < 1.0  # the trap is there
        assert route_state(pose, route, hint=ROUTE_START_HINT).segment == 0
        expert = RouteExpert()
        expert.reset()
        expert.act(pose, state.speed, route)
        at_start, _ = kinematic_vector(pose, state.speed, route, hint=0)
        np.testing.assert_array_equal(expert.kinematics, at_start)
        assembler = TransitionAssembler(FeatureConfig(),
                                        RewardConfig(lateral_tolerance=6.5),
                                        EpisodeConfig(max_lateral_deviation=6.5))
        assembler.on_route(route)
        assembler.on_episode_start(1)
        for step in range(10):  # past the event window, so the steps are decided
            stamp = 1 + step * 50_000_000
            assembler.on_odometry(stamp, pose_of(state), state.speed, state.yaw_rate)
            assembler.on_frame(stamp, np.zeros((84, 84), np.uint8))
            assembler.on_control(stamp, np.array([0.0, 0.5], np.float32))
            state = env.step(0.0, 0.5, 0.0)
        kinds = [type(item).__name__ for item in assembler.pop_output()]
        assert 'Transition' in kinds and 'EpisodeEnd' not in kinds, kinds
    finally:
        env.close()
    gym_env = SimGymEnv()
    try:
        gym_env.reset(seed=5000)
        _, reward, terminated, _, info = gym_env.step(np.array([0.0, 0.5], np.float32))
        assert not terminated and reward < 50.0, info
    finally:
        gym_env.close()
