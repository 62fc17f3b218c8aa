"""Tests for the per-frame driving pipeline (frames + pose -> control command), on CPU."""
import math

import numpy as np
import pytest
import torch
from helpers import ConstantRunner, camera_frame, straight_route

from av_td3_ros.driving.decision import Reason
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import AR1Noise, ExplorationConfig
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import SAFE_STOP, action_to_control
from av_td3_ros.policy.features import Pose2D, kinematic_vector
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.policy.preprocessing import FrameStack, ImageFormatError, ImageView, preprocess

SPEC = PolicySpec()
CPU = torch.device('cpu')
ROUTE = straight_route(length=198.0)  # 100 points 2 m apart along +x


@pytest.fixture(scope='module')
def policy():
    """Return a random default policy (tests must not modify it)."""
    torch.manual_seed(7)
    return ActorPolicy(SPEC.network)


@pytest.fixture
def runner(policy):
    return PolicyRunner(policy, CPU)


def pose(index):
    return Pose2D(x=2.0 * index + 1.0, y=0.3 * math.sin(index), yaw=0.05 * index)


def assert_valid_command(command):
    """Check the CarlaEgoVehicleControl ranges."""
    assert -1.0 <= command.steer <= 1.0
    assert 0.0 <= command.throttle <= 1.0
    assert 0.0 <= command.brake <= 1.0
    assert command.throttle == 0.0 or command.brake == 0.0
    assert command.hand_brake is False and command.reverse is False
    for value in (command.steer, command.throttle, command.brake):
        assert type(value) is float


# --- eval mode -----------------------------------------------------------------------------------

def test_one_command_per_frame_in_range(runner):
    pipeline = DrivingPipeline(SPEC, runner)
    for i in range(6):
        result = pipeline.step(camera_frame(i), pose(i), 3.0 + i, ROUTE)
        assert result.reason is Reason.POLICY
        assert result.action.shape == (2,) and np.isfinite(result.action).all()
        assert result.command == action_to_control(*result.action)
        assert_valid_command(result.command)
        assert result.route is not None and result.route.segment == i
        assert {'preprocess', 'features', 'inference'} <= set(result.timings_ms)
    assert pipeline.steps == 6


def test_800x600_camera_frame(runner):
    pipeline = DrivingPipeline(SPEC, runner)
    result = pipeline.step(camera_frame(0, 600, 800), pose(0), 0.0, None)
    assert result.reason is Reason.POLICY
    assert_valid_command(result.command)
    assert result.route is None


def test_action_equals_the_policy_on_the_hand_built_observation(policy, runner):
    pipeline = DrivingPipeline(SPEC, runner)
    stack = FrameStack(SPEC.preprocessing)
    for i in range(5):
        image = camera_frame(i)
        result = pipeline.step(image, pose(i), 4.0, ROUTE)
        frames = stack.push(preprocess(image, SPEC.preprocessing)).copy()
        kinematics, _ = kinematic_vector(pose(i), 4.0, ROUTE, SPEC.features)
        with torch.no_grad():
            expected = policy(torch.from_numpy(frames)[None], torch.from_numpy(kinematics)[None])
        np.testing.assert_allclose(result.action, expected[0].numpy(), rtol=0, atol=1e-6)


def test_eval_mode_is_deterministic_after_reset(runner, policy):
    pipeline = DrivingPipeline(SPEC, runner)
    first = [pipeline.step(camera_frame(i), pose(i), 5.0, ROUTE).action.copy()
             for i in range(5)]
    pipeline.reset_episode()
    second = [pipeline.step(camera_frame(i), pose(i), 5.0, ROUTE).action.copy()
              for i in range(5)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # The stack really was cleared: without the reset the same frames give other actions.
    third = [pipeline.step(camera_frame(i), pose(i), 5.0, ROUTE).action.copy()
             for i in range(2)]
    assert not np.array_equal(third[0], first[0])
    fresh = DrivingPipeline(SPEC, PolicyRunner(policy, CPU))
    np.testing.assert_array_equal(fresh.step(camera_frame(0), pose(0), 5.0, ROUTE).action,
                                  first[0])


@pytest.mark.parametrize('mode', ['eval', 'explore'])
def test_warm_ups_between_frames_change_nothing_the_frames_get(policy, mode):
    exploration = ExplorationConfig(mode=mode, learning_starts=0, seed=3)
    plain = DrivingPipeline(SPEC, PolicyRunner(policy, CPU), exploration)
    warmed_runner = ConstantRunner([0.0, 0.0])
    warmed = DrivingPipeline(SPEC, warmed_runner, exploration)
    assert not warmed.warm_up()  # no frame yet: nothing to run
    warmed.set_runner(PolicyRunner(policy, CPU))
    for i in range(6):
        expected = plain.step(camera_frame(i), pose(i), 4.0, ROUTE)
        got = warmed.step(camera_frame(i), pose(i), 4.0, ROUTE)
        np.testing.assert_array_equal(got.action, expected.action)
        assert got.command == expected.command
        assert warmed.warm_up() and warmed.warm_up()
        np.testing.assert_array_equal(warmed.stack.frames, plain.stack.frames)
        np.testing.assert_array_equal(warmed.kinematics, plain.kinematics)
    assert warmed.steps == plain.steps == 6
    assert warmed_runner.calls == 0
    warmed.set_runner(warmed_runner)
    assert warmed.warm_up() and warmed_runner.calls == 1  # it does run the policy
    warmed.set_runner(None)
    assert not warmed.warm_up()


@pytest.mark.parametrize('exploration', [ExplorationConfig(mode='expert'),
                                         ExplorationConfig(mode='explore', learning_starts=10)])
def test_no_warm_up_when_the_next_frame_will_not_run_the_policy(exploration):
    runner = ConstantRunner([0.1, 0.2])
    pipeline = DrivingPipeline(SPEC, runner, exploration)
    pipeline.step(camera_frame(0), pose(0), 4.0, ROUTE)
    assert not pipeline.warm_up() and runner.calls == 0


# --- no policy / non-finite ----------------------------------------------------------------------

def test_no_policy_gives_safe_stop():
    pipeline = DrivingPipeline(SPEC, None)
    result = pipeline.step(camera_frame(0), pose(0), 2.0, ROUTE)
    assert result.command is SAFE_STOP
    assert result.reason is Reason.NO_POLICY
    assert result.action is None
    assert result.route is not None


def test_set_runner_switches_between_stop_and_driving(runner):
    pipeline = DrivingPipeline(SPEC, None)
    assert pipeline.step(camera_frame(0), pose(0), 0.0, ROUTE).reason is Reason.NO_POLICY
    pipeline.set_runner(runner)
    assert pipeline.step(camera_frame(1), pose(1), 0.0, ROUTE).reason is Reason.POLICY
    pipeline.set_runner(None)
    assert pipeline.step(camera_frame(2), pose(2), 0.0, ROUTE).command is SAFE_STOP


def test_nan_weights_give_safe_stop():
    torch.manual_seed(1)
    bad = ActorPolicy(SPEC.network)
    with torch.no_grad():
        bad.actor.fc3.bias[1] = float('nan')  # what load_policy would have refused
    pipeline = DrivingPipeline(SPEC, PolicyRunner(bad, CPU))
    result = pipeline.step(camera_frame(0), pose(0), 2.0, ROUTE)
    assert result.command is SAFE_STOP
    assert result.reason is Reason.NON_FINITE_ACTION
    assert np.isnan(result.action[1])


@pytest.mark.parametrize('action', [[math.inf, 0.0], [0.0, -math.inf], [math.nan, math.nan]])
def test_non_finite_runner_output_gives_safe_stop_in_explore_mode_too(action):
    exploration = ExplorationConfig(mode='explore', learning_starts=0)
    pipeline = DrivingPipeline(SPEC, ConstantRunner(action), exploration)
    result = pipeline.step(camera_frame(0), pose(0), 2.0, ROUTE)
    assert result.command is SAFE_STOP
    assert result.reason is Reason.NON_FINITE_ACTION


# --- explore mode --------------------------------------------------------------------------------

def test_noise_schedule_values():
    config = ExplorationConfig(mode='explore', learning_starts=100, noise_start=0.3,
                               noise_end=0.1, noise_decay_steps=1000)
    assert config.noise_std(0) == pytest.approx(0.3)
    assert config.noise_std(100) == pytest.approx(0.3)
    assert config.noise_std(350) == pytest.approx(0.25)
    assert config.noise_std(600) == pytest.approx(0.2)
    assert config.noise_std(1100) == pytest.approx(0.1)
    assert config.noise_std(10 ** 6) == pytest.approx(0.1)
    stds = [config.noise_std(s) for s in range(0, 1500, 10)]
    assert all(a >= b for a, b in zip(stds[:-1], stds[1:], strict=True))
    assert ExplorationConfig(noise_decay_steps=0, noise_end=0.05).noise_std(7) == 0.05


def test_av_td3_system_schedule_defaults():
    config = ExplorationConfig(mode='explore')
    assert config.learning_starts == 10000
    assert config.noise_std(10000) == pytest.approx(0.3)
    assert config.noise_std(30000) == pytest.approx(0.1)


def test_exploration_config_refuses_bad_values():
    with pytest.raises(ValueError, match="'train'"):
        ExplorationConfig(mode='train')
    with pytest.raises(ValueError, match='learning_starts'):
        ExplorationConfig(learning_starts=-1)


def test_explore_random_phase_then_scheduled_noise():
    config = ExplorationConfig(mode='explore', learning_starts=3, noise_start=0.3, noise_end=0.1,
                               noise_decay_steps=10, seed=42)
    base = np.array([0.2, -0.1], np.float32)
    stub = ConstantRunner(base)
    pipeline = DrivingPipeline(SPEC, stub, config)
    rng = np.random.default_rng(42)  # replays the pipeline's seeded draws
    for step in range(1, 4):
        result = pipeline.step(camera_frame(step), pose(step), 1.0, ROUTE)
        assert result.reason is Reason.RANDOM
        expected = rng.uniform(-1.0, 1.0, 2)
        np.testing.assert_array_equal(result.action, expected)
        assert result.command == action_to_control(*expected)
    assert stub.calls == 0  # the policy is not consulted in the random phase
    for step in range(4, 20):
        result = pipeline.step(camera_frame(step), pose(step), 1.0, ROUTE)
        assert result.reason is Reason.POLICY
        noise = rng.normal(0.0, config.noise_std(step), 2)
        np.testing.assert_allclose(result.action, np.clip(base + noise, -1, 1), atol=1e-6)
        assert_valid_command(result.command)
    assert stub.calls == 16


def test_explore_noise_has_the_scheduled_spread_and_is_clipped():
    config = ExplorationConfig(mode='explore', learning_starts=0, noise_end=0.5,
                               noise_decay_steps=0)
    stub = ConstantRunner([0.9, 0.0])
    pipeline = DrivingPipeline(SPEC, stub, config)
    image = camera_frame(0, 40, 40)
    actions = np.array([pipeline.step(image, pose(0), 1.0, None).action for _ in range(400)])
    assert actions.max() <= 1.0 and actions.min() >= -1.0
    assert (actions[:, 0] == 1.0).sum() > 50  # 0.9 + N(0, 0.5) is often clipped
    assert 0.4 < actions[:, 1].std() < 0.6


def test_random_phase_without_policy_still_drives():
    config = ExplorationConfig(mode='explore', learning_starts=2)
    pipeline = DrivingPipeline(SPEC, None, config)
    reasons = [pipeline.step(camera_frame(i), pose(i), 1.0, ROUTE).reason for i in range(3)]
    assert reasons == [Reason.RANDOM, Reason.RANDOM, Reason.NO_POLICY]


def test_eval_mode_adds_no_noise():
    stub = ConstantRunner([0.25, -0.5])
    pipeline = DrivingPipeline(SPEC, stub, ExplorationConfig(mode='eval', learning_starts=5))
    for i in range(3):
        result = pipeline.step(camera_frame(i), pose(i), 1.0, ROUTE)
        assert result.reason is Reason.POLICY
        np.testing.assert_array_equal(result.action, [0.25, -0.5])
    assert stub.calls == 3


# --- bad images ----------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [
    ImageView('yuv422', 150, 200, 400, bytes(150 * 400)),
    ImageView('bgra8', 150, 200, 800, bytes(150 * 800 - 1)),
    ImageView('bgra8', 0, 200, 800, b''),
    ImageView('bgra8', 150, 200, 600, bytes(150 * 600)),
])
def test_bad_image_raises_and_leaves_the_stack_unchanged(runner, bad):
    pipeline = DrivingPipeline(SPEC, runner)
    for i in range(2):
        pipeline.step(camera_frame(i), pose(i), 1.0, ROUTE)
    before = pipeline.stack.frames.copy()
    with pytest.raises(ImageFormatError):
        pipeline.step(bad, pose(2), 1.0, ROUTE)
    np.testing.assert_array_equal(pipeline.stack.frames, before)
    assert pipeline.stack.count == 2
    assert pipeline.steps == 2
    # The next good frame continues the episode as if the bad one never came.
    reference = DrivingPipeline(SPEC, runner)
    for i in (0, 1, 2):
        expected = reference.step(camera_frame(i), pose(i), 1.0, ROUTE).action
    result = pipeline.step(camera_frame(2), pose(2), 1.0, ROUTE)
    np.testing.assert_array_equal(result.action, expected)


def test_explore_noise_is_white_at_the_scheduled_std():
    config = ExplorationConfig(mode='explore', learning_starts=0, noise_end=0.2,
                               noise_decay_steps=0, seed=3)
    pipeline = DrivingPipeline(SPEC, ConstantRunner([0.0, 0.0]), config)
    image = camera_frame(0, 40, 40)
    noise = np.array([pipeline.step(image, pose(0), 1.0, None).action for _ in range(3000)])
    for column in noise.T:
        assert 0.17 < column.std() < 0.23
        assert abs(np.corrcoef(column[:-1], column[1:])[0, 1]) < 0.1


def test_ar1_noise_keeps_its_std_lasts_for_steps_and_restarts_from_zero():
    # Imitation's data collection perturbs the expert with it (learning/imitation.py).
    noise = AR1Noise(np.random.default_rng(5), 0.2, 0.9)
    samples = np.array([noise().copy() for _ in range(5000)])
    for column in samples.T:
        assert 0.17 < column.std() < 0.23  # the stationary std is sigma, whatever c
        assert 0.85 < np.corrcoef(column[:-1], column[1:])[0, 1] < 0.95
    noise.reset()
    first = noise().copy()
    assert np.all(np.abs(first) < 0.2 * 5 * np.sqrt(1 - 0.9 ** 2))  # one innovation only
    with pytest.raises(ValueError, match='correlation'):
        AR1Noise(np.random.default_rng(0), 0.2, 1.0)
