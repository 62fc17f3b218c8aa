"""The shipped camera policy loads in the driver and drives the stand-in on the road."""
from pathlib import Path

import pytest
import torch

from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
from av_td3_ros.policy.networks import NetworkConfig
from av_td3_ros.sim.evaluation import evaluate_expert, evaluate_policy
from av_td3_ros.sim.sim_env import SimEnvConfig
from av_td3_ros.tools.demo import default_policy_path
from av_td3_ros.tools.evaluate_policy import main as evaluate_main

MODEL = Path(__file__).resolve().parents[1] / 'models' / 'camera_policy.safetensors'
# What launch/sim_drive.launch.xml gives the driver (config/driver.yaml + feature_norm).
SIM_DRIVER_SPEC = PolicySpec(network=NetworkConfig(feature_norm='layernorm_tanh'))
SEED = 42  # a track no recipe (500-503, 1000+, 2000+) or README figure (7000+) uses
STEPS = 300


@pytest.fixture(scope='module')
def policy():
    """Load the shipped policy as the sim driver would."""
    loaded, _ = load_policy(MODEL, SIM_DRIVER_SPEC)
    return loaded


def test_shipped_policy_is_the_demo_default_small_and_camera_profile(policy):
    assert default_policy_path() == MODEL
    assert MODEL.stat().st_size <= 8 * 1024 * 1024
    assert policy.config.kinematic_inputs == 'speed'
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def test_shipped_policy_drives_a_deterministic_episode_on_the_road(policy):
    config = SimEnvConfig(max_episode_steps=STEPS)
    (result,) = evaluate_policy(policy, SIM_DRIVER_SPEC, [SEED], config)
    (expert,) = evaluate_expert([SEED], env_config=SimEnvConfig(max_episode_steps=STEPS,
                                                                render_camera=False))
    assert result.off_track_steps == 0, result.line()
    assert result.steps == STEPS, result.line()
    # it makes real progress: most of what the expert earns in the same steps
    assert result.episode_return > 0.7 * expert.episode_return, (result.line(), expert.line())


@pytest.mark.slow
def test_shipped_policy_drives_through_the_ros_loop(ros_env, capsys):
    steps = 150
    assert evaluate_main(['--checkpoint', str(MODEL), '--seeds', str(SEED), '--through-ros',
                          '--max-steps', str(steps), '--timeout', '240']) == 0
    ros_line = capsys.readouterr().out.splitlines()[0]
    ros_return = float(ros_line.split('return ')[1].split(',')[0])
    (in_process,) = evaluate_policy(load_policy(MODEL)[0], SIM_DRIVER_SPEC, [SEED],
                                    SimEnvConfig(max_episode_steps=steps))
    # the bridge waits for every command, so the ROS loop drives the same episode
    assert ros_return == pytest.approx(in_process.episode_return, abs=15.0), ros_line
    assert ros_return > 50.0, ros_line


def test_route_policy_sees_the_route_and_drives_on_the_road():
    route_model = MODEL.with_name('route_policy.safetensors')
    assert route_model.stat().st_size <= 8 * 1024 * 1024
    policy, _ = load_policy(route_model, SIM_DRIVER_SPEC)
    assert policy.config.kinematic_inputs == 'all'
    (result,) = evaluate_policy(policy, SIM_DRIVER_SPEC, [SEED],
                                SimEnvConfig(max_episode_steps=STEPS))
    assert result.off_track_steps == 0 and result.steps == STEPS, result.line()
    assert result.episode_return > 100.0, result.line()
