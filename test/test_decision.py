"""Tests of the one driving decision: every Reason, its severity and the random phase."""
import math

import pytest
from helpers import STRAIGHT, ConstantRunner, image, odometry, path, random_runner

from av_td3_ros.driving.decision import Decision, DriverInputs, Reason, Severity
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import SAFE_STOP

SPEC = PolicySpec()
NODE_REASONS = {Reason.WAITING_FOR_CAMERA, Reason.CAMERA_STALLED, Reason.INTERNAL_ERROR}
"""Reasons the driver node gives without a frame (watchdog, callback errors)."""


@pytest.fixture(scope='module')
def runner():
    return random_runner(0, SPEC)


def ready_inputs(runner=None, exploration=None, odometry_timeout=None, require_route=True):
    """Return DriverInputs with a good route and odometry received at time 0."""
    pipeline = DrivingPipeline(SPEC, runner, exploration or ExplorationConfig())
    inputs = DriverInputs(pipeline, odometry_timeout, require_route)
    inputs.on_route(path(STRAIGHT))
    inputs.on_odometry(odometry(), 0.0)
    return inputs


def reach_every_frame_reason(runner):
    """Return {reason: decision} for one frame of each situation the decision knows."""
    found = {}

    def keep(decision):
        found.setdefault(decision.reason, decision)

    keep(ready_inputs(runner).decide(image(), 0.0))
    keep(ready_inputs(None, ExplorationConfig(mode='explore', learning_starts=1)).decide(
        image(), 0.0))
    keep(ready_inputs(None, ExplorationConfig(mode='expert')).decide(image(), 0.0))
    keep(ready_inputs(None).decide(image(), 0.0))
    keep(ready_inputs(ConstantRunner([math.nan, 0.0])).decide(image(), 0.0))
    keep(ready_inputs(runner).decide(image(encoding='yuv422'), 0.0))
    bad_odometry = ready_inputs(runner)
    bad_odometry.on_odometry(odometry(vx=math.inf), 0.0)
    keep(bad_odometry.decide(image(), 0.0))
    keep(DriverInputs(DrivingPipeline(SPEC, runner), None, True).decide(image(), 0.0))
    no_route = DriverInputs(DrivingPipeline(SPEC, runner), None, True)
    no_route.on_odometry(odometry(), 0.0)
    keep(no_route.decide(image(), 0.0))
    bad_route = ready_inputs(runner)
    bad_route.on_route(path([(0.0, 0.0)]))
    keep(bad_route.decide(image(), 0.0))
    return found


# Test if every frame reason is reachable, and a brake is always the full brake.
def test_every_reason_is_reachable_from_a_frame(runner):
    found = reach_every_frame_reason(runner)
    assert set(found) == set(Reason) - NODE_REASONS
    for reason, decision in found.items():
        if reason.drives:
            assert decision.step is not None and decision.step.reason is reason
        else:
            assert decision.command == SAFE_STOP, reason
    for reason in (Reason.BAD_FRAME, Reason.BAD_ODOMETRY, Reason.BAD_ROUTE):
        assert found[reason].detail, reason
        assert found[reason].text == f'{reason.text}: {found[reason].detail}'
    assert found[Reason.NO_ROUTE].text == 'no route'


# Test if the texts logs and /diagnostics show are the driver's known ones.
def test_reason_texts_and_log_lines():
    assert [r.text for r in Reason if r.drives] == ['policy', 'random', 'expert']
    assert Decision.brake(Reason.NO_RECENT_ODOMETRY).text == 'no recent odometry'
    assert Decision.brake(Reason.NO_POLICY).log_message == 'braking: no policy'
    assert Decision.brake(Reason.BAD_ROUTE, 'too short').log_message == \
        'braking: bad route: too short'
    assert Decision.brake(Reason.BAD_FRAME, 'odd size').log_message == \
        'bad camera frame, braking: odd size'
    assert Decision.brake(Reason.INTERNAL_ERROR).text == 'internal error (see log)'


# Test if the severity alone tells driving from braking and names a logger level.
def test_severity_decides_the_log_level():
    for reason in Reason:
        assert reason.drives == (reason.severity is Severity.DRIVING)
        if not reason.drives:
            assert reason.severity.value in ('warn', 'error')
    assert Reason.BAD_FRAME.severity is Severity.ERROR  # the input itself is broken
    assert Reason.NO_POLICY.severity is Severity.WARN


# Test if stale odometry brakes only after odometry_timeout has passed.
def test_stale_odometry_brakes_after_the_timeout(runner):
    inputs = ready_inputs(runner, odometry_timeout=0.5)
    assert inputs.decide(image(), 0.5).reason is Reason.POLICY
    assert inputs.decide(image(), 0.51).reason is Reason.NO_RECENT_ODOMETRY


# Test if the route is optional unless required.
def test_no_route_drives_when_not_required(runner):
    inputs = DriverInputs(DrivingPipeline(SPEC, runner), None, require_route=False)
    inputs.on_odometry(odometry(), 0.0)
    assert inputs.decide(image(), 0.0).reason is Reason.POLICY


# --- the random phase ---------------------------------------------------------------------------

# Test if frames 1..learning_starts are random and frame learning_starts + 1 is the policy's.
@pytest.mark.parametrize('learning_starts', [0, 1, 3])
def test_random_phase_boundary(learning_starts):
    config = ExplorationConfig(mode='explore', learning_starts=learning_starts)
    pipeline = DrivingPipeline(SPEC, ConstantRunner([0.1, 0.2]), config)
    inputs = DriverInputs(pipeline, None, require_route=False)
    inputs.on_odometry(odometry(), 0.0)
    for frame in range(1, learning_starts + 3):
        assert pipeline.exploring_randomly == (frame <= learning_starts)  # before frame `frame`
        reason = inputs.decide(image(sec=frame), 0.0).reason
        assert reason is (Reason.RANDOM if frame <= learning_starts else Reason.POLICY), frame
        assert pipeline.steps == frame


# Test if the boundary is one rule: 1-based frames, inclusive, explore mode only.
def test_is_random_rule():
    config = ExplorationConfig(mode='explore', learning_starts=10)
    assert config.is_random(1) and config.is_random(10) and not config.is_random(11)
    assert not ExplorationConfig(mode='explore', learning_starts=0).is_random(1)
    for mode in ('eval', 'expert', 'dagger'):
        assert not ExplorationConfig(mode=mode, learning_starts=10).is_random(1)


# Test if a brake before the pipeline runs does not use up a random step.
def test_braked_frames_do_not_count_as_learning_starts():
    config = ExplorationConfig(mode='explore', learning_starts=1)
    inputs = DriverInputs(DrivingPipeline(SPEC, None, config), None, require_route=True)
    inputs.on_odometry(odometry(), 0.0)
    assert inputs.decide(image(), 0.0).reason is Reason.NO_ROUTE
    assert inputs.pipeline.exploring_randomly
    inputs.on_route(path(STRAIGHT))
    assert inputs.decide(image(), 0.0).reason is Reason.RANDOM
    assert inputs.decide(image(sec=2), 0.0).reason is Reason.NO_POLICY
