"""Tests of the driver's expert and dagger modes in the per-frame pipeline (no ROS)."""
import pytest
from helpers import camera_frame, random_runner, straight_route

from av_td3_ros.driving.decision import Reason
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.experts.route_expert import expert_action_from_kinematics
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.control import action_to_control
from av_td3_ros.policy.features import Pose2D, kinematic_vector

SPEC = PolicySpec()
ROUTE = straight_route(length=198.0)  # 100 points 2 m apart along +x
POSE = Pose2D(10.0, 1.5, 0.1)


def frame(index):
    return camera_frame(index, height=120, width=160)


def expert_command():
    vector, _ = kinematic_vector(POSE, 8.0, ROUTE, SPEC.features)
    return action_to_control(*expert_action_from_kinematics(vector, SPEC.features))


@pytest.fixture(scope='module')
def runner():
    return random_runner(2, SPEC)


def test_expert_mode_drives_without_a_policy():
    pipeline = DrivingPipeline(SPEC, None, ExplorationConfig(mode='expert'))
    result = pipeline.step(frame(0), POSE, 8.0, ROUTE)
    assert result.reason is Reason.EXPERT
    assert result.command == expert_command()
    assert result.command.throttle > 0.0 and result.command.steer > 0.0  # back to the route
    # without a route the expert brakes
    assert pipeline.step(frame(1), POSE, 8.0, None).command.brake == 1.0


@pytest.mark.parametrize('beta, reason', [(1.0, Reason.EXPERT), (0.0, Reason.POLICY)])
def test_dagger_mode_with_a_fixed_beta(runner, beta, reason):
    config = ExplorationConfig(mode='dagger', beta_start=beta, beta_end=beta)
    pipeline = DrivingPipeline(SPEC, runner, config)
    reasons = {pipeline.step(frame(i), POSE, 8.0, ROUTE).reason for i in range(5)}
    assert reasons == {reason}


def test_dagger_mode_mixes_by_the_beta_schedule(runner):
    config = ExplorationConfig(mode='dagger', beta_start=1.0, beta_end=0.0,
                               beta_decay_steps=400, seed=3)
    assert config.beta(1) == 1.0 and config.beta(201) == pytest.approx(0.5)
    assert config.beta(10_000) == 0.0
    pipeline = DrivingPipeline(SPEC, runner, config)
    reasons = [pipeline.step(frame(0), POSE, 8.0, ROUTE).reason for _ in range(400)]
    early = reasons[:100].count(Reason.EXPERT) / 100
    late = reasons[300:].count(Reason.EXPERT) / 100
    assert early > 0.75 and late < 0.25


def test_dagger_betas_are_validated():
    with pytest.raises(ValueError, match='beta'):
        ExplorationConfig(mode='dagger', beta_start=1.5)


@pytest.mark.slow
def test_driver_node_in_expert_mode_drives_the_simulator_like_the_core(ros_env, capsys):
    from av_td3_ros.sim.evaluation import evaluate_expert
    from av_td3_ros.sim.sim_env import SimEnvConfig
    from av_td3_ros.tools.evaluate_policy import main as evaluate_main
    # sim_bridge + driver_node (mode:=expert, no checkpoint) as processes, 120 steps
    assert evaluate_main(['--expert', '--seeds', '43', '--through-ros', '--max-steps', '120',
                          '--timeout', '240']) == 0
    line = capsys.readouterr().out.splitlines()[0]
    ros_return = float(line.split('return ')[1].split(',')[0])
    (core,) = evaluate_expert([43], env_config=SimEnvConfig(max_episode_steps=120,
                                                            render_camera=False))
    assert ros_return == pytest.approx(core.episode_return, abs=10.0), line
    assert ros_return > 50.0, line
