"""Tests of the gymnasium view of the stand-in (av_td3_ros.sim.gym_env)."""
import numpy as np
import pytest

from av_td3_ros.policy.features import FeatureConfig
from av_td3_ros.sim.gym_env import SimGymEnv


@pytest.fixture
def env():
    """Yield a camera-profile view of the stand-in; close it after the test."""
    view = SimGymEnv(kinematic_inputs='speed')
    yield view
    view.close()


def test_spaces_match_the_actor_inputs(env):
    """Frames are 4 stacked 84x84 uint8 images; the vector has the 53 kinematic values."""
    assert env.observation_space['frames'].shape == (4, 84, 84)
    assert env.observation_space['frames'].dtype == np.uint8
    assert env.observation_space['kinematics'].shape == (FeatureConfig().size,)
    assert env.action_space.shape == (2,)


def test_reset_and_step_give_masked_observations_and_the_shaped_reward(env):
    """A step fills the newest frame, keeps only the speed, and pays the on-road reward."""
    observation, info = env.reset(seed=3)
    assert info['track'] == 3
    assert env.observation_space.contains(observation)
    assert not observation['frames'][:-1].any()  # zero fill before the first frame
    for _ in range(20):
        observation, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
    assert env.observation_space.contains(observation)
    assert observation['kinematics'][0] > 0.0  # moving
    assert not observation['kinematics'][1:].any()  # the route is masked
    assert observation['frames'].any()
    assert np.isfinite(reward) and reward > 0.0  # on the road, making progress
    assert not (terminated or truncated)
    assert info['sim_return'] > 0.0


def test_unseeded_resets_take_consecutive_tracks():
    """Episodes reset without a seed use track_start, +1, ..."""
    view = SimGymEnv(track_start=11)
    try:
        assert view.reset()[1]['track'] == 11
        assert view.reset()[1]['track'] == 12
    finally:
        view.close()
