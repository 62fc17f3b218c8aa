# Property-based tests of the driver core against arbitrary images, routes and odometry:
# nothing raises, a bad input gives a full brake whose reason names it, and whatever is
# accepted yields finite features and a finite command.
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import CHANNELS, STRAIGHT, image, odometry, path, random_runner, stamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from av_td3_ros.driving.decision import DriverInputs, Reason
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import SAFE_STOP
from av_td3_ros.policy.features import (
    MAX_COORDINATE,
    MAX_SPEED,
    Pose2D,
    kinematic_vector,
    odometry_problem,
    route_problem,
)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.function_scoped_fixture])

any_float = st.floats(allow_nan=True, allow_infinity=True)
plain_float = st.floats(-1e3, 1e3, allow_nan=False)
coordinate = st.one_of(plain_float, any_float, st.sampled_from([1e7, -1e7, 1.0000001e7]))


@pytest.fixture(scope='module')
def runner():
    torch.set_num_threads(1)  # as the driver: one inference thread
    return random_runner(0)


def fresh_inputs(runner):
    inputs = DriverInputs(DrivingPipeline(PolicySpec(), runner), None, require_route=True)
    inputs.on_route(path(STRAIGHT))
    inputs.on_odometry(odometry(), 0.0)
    return inputs


def assert_drives(decision):
    assert decision.reason is Reason.POLICY, decision.text
    command = decision.command
    assert np.isfinite([command.steer, command.throttle, command.brake]).all()


@st.composite
def frames(draw):
    """Draw an image message: mostly near-valid layouts, with any field possibly broken."""
    encoding = draw(st.one_of(st.sampled_from(list(CHANNELS)),
                              st.sampled_from(['', 'yuv422', 'BGRA8', '16UC1', 'bgra8 ']),
                              st.text(max_size=12)))
    height = draw(st.one_of(st.integers(0, 40), st.sampled_from([2**32 - 1, 2**31])))
    width = draw(st.one_of(st.integers(0, 40), st.sampled_from([2**32 - 1, 2**31])))
    row = width * CHANNELS.get(encoding, 4)
    step = draw(st.one_of(st.just(row), st.integers(0, 200), st.just(row + 3)))
    exact = height * step <= 200_000
    size = draw(st.one_of(st.just(height * step if exact else 0), st.integers(0, 5000)))
    data = draw(st.binary(min_size=min(size, 5000), max_size=min(size, 5000))) \
        if size <= 5000 else bytes(size)
    sec = draw(st.one_of(st.integers(0, 2**31 - 1), st.integers(-2**31, -1)))
    nanosec = draw(st.one_of(st.integers(0, 10**9 - 1), st.integers(10**9, 2**32 - 1)))
    msg = SimpleNamespace(header=SimpleNamespace(stamp=stamp(sec, nanosec)),
                          encoding=encoding, height=height, width=width, step=step, data=data)
    bad = (encoding not in CHANNELS or height == 0 or width == 0 or step < row
           or len(data) != height * step or sec < 0 or nanosec >= 10**9)
    return msg, bad


@PROPERTY_SETTINGS
@given(frames())
def test_any_frame_is_driven_or_braked_for_with_a_reason(runner, drawn):
    msg, bad = drawn
    inputs = fresh_inputs(runner)
    decision = inputs.decide(msg, 0.0)
    if bad:
        assert decision.command == SAFE_STOP and decision.reason is Reason.BAD_FRAME
        assert decision.text == f'bad frame: {decision.detail}' and decision.detail
        assert decision.step is None
        assert inputs.pipeline.stack.count == 0  # a bad frame never enters the stack
    else:
        assert_drives(decision)
    # The next good frame drives whatever came before.
    assert_drives(inputs.decide(image(sec=5), 0.0))


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(coordinate, coordinate), max_size=12))
def test_any_route_is_usable_or_refused_with_a_reason(runner, points):
    route = np.array(points, float).reshape(-1, 2)
    problem = route_problem(route)
    inputs = fresh_inputs(runner)
    assert inputs.on_route(path(points)) == problem
    decision = inputs.decide(image(), 0.0)
    if problem is None:
        assert np.isfinite(route).all() and (np.abs(route) <= MAX_COORDINATE).all()
        assert len({tuple(p) for p in route}) >= 2
        assert_drives(decision)
        vector, state = kinematic_vector(Pose2D(3.0, -1.0, 0.2), 4.0, route)
        assert np.isfinite(vector).all() and state is not None
    else:
        assert decision.command == SAFE_STOP and decision.reason is Reason.BAD_ROUTE
        assert decision.text == f'bad route: {problem}'
        assert inputs.route is None
    inputs.on_route(path(STRAIGHT))  # a good route repairs it
    assert_drives(inputs.decide(image(sec=2), 0.0))


@PROPERTY_SETTINGS
@given(x=coordinate, y=coordinate, qz=st.one_of(plain_float, any_float),
       qw=st.one_of(plain_float, any_float), vx=st.one_of(plain_float, any_float),
       vy=st.one_of(plain_float, any_float), sec=st.integers(-2**31, 2**31 - 1),
       nanosec=st.integers(0, 2**32 - 1))
def test_any_odometry_is_usable_or_refused_with_a_reason(runner, x, y, qz, qw, vx, vy, sec,
                                                         nanosec):
    inputs = fresh_inputs(runner)
    problem = inputs.on_odometry(odometry(x=x, y=y, qz=qz, qw=qw, vx=vx, vy=vy, sec=sec,
                                          nanosec=nanosec), 0.0)
    decision = inputs.decide(image(sec=max(sec, 0)), 0.0)
    if problem is None:
        assert sec >= 0 and nanosec < 10**9
        assert_drives(decision)
        assert np.isfinite(decision.step.action).all()
        assert np.isfinite(inputs.pipeline.kinematics).all()
        pose = inputs.latest_pose()
        assert odometry_problem(pose.x, pose.y, pose.yaw, 0.0) is None
        assert abs(inputs.odometry_for(10**18)[1]) <= MAX_SPEED
    else:
        assert decision.command == SAFE_STOP and decision.reason is Reason.BAD_ODOMETRY
        assert decision.text == f'bad odometry: {problem}'
    inputs.on_odometry(odometry(), 0.0)  # the next good sample repairs it
    assert_drives(inputs.decide(image(sec=3), 0.0))


@pytest.mark.parametrize('points, expected', [
    ([], 'fewer than two distinct points'),
    ([(1.0, 2.0)], 'fewer than two distinct points'),
    ([(1.0, 2.0)] * 2, 'fewer than two distinct points'),
    ([(0.0, 0.0), (float('nan'), 1.0), (2.0, 0.0)], 'non-finite'),
    ([(0.0, 0.0), (2e7, 0.0)], 'beyond'),
    ([(0.0, 0.0), (0.0, 0.0), (1.0, 0.0)], None),
])
def test_route_problem_examples(points, expected):
    problem = route_problem(np.array(points, float).reshape(-1, 2))
    assert (problem is None) if expected is None else (expected in problem)


def test_odometry_problem_examples():
    assert odometry_problem(1.0, 2.0, 0.5, -3.0) is None
    assert 'non-finite yaw' in odometry_problem(0.0, 0.0, float('nan'), 0.0)
    assert 'non-finite x, speed' in odometry_problem(float('inf'), 0.0, 0.0, float('nan'))
    assert 'beyond' in odometry_problem(2e7, 0.0, 0.0, 0.0)
    assert 'speed' in odometry_problem(0.0, 0.0, 0.0, 1e4)
