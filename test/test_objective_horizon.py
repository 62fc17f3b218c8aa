# Test if the discount decides whether the trainer's objective prefers a lap or a fast crash.
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from av_td3_ros.sim.gym_env import SimGymEnv

_PATH = Path(__file__).resolve().parents[1] / 'bench' / 'objective_horizon.py'
_SPEC = importlib.util.spec_from_file_location('objective_horizon', _PATH)
horizon = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(horizon)

TRACK = 14
"""A track where the too-fast expert leaves the road late (after ~28 s), not in the first
corner: the case where the discount decides."""


@pytest.fixture(scope='module')
def drives():
    env = SimGymEnv(kinematic_inputs='all')
    try:
        return {name: horizon.drive(env, TRACK, horizon.VARIANTS[name])
                for name in ('expert', 'too fast (40 m/s^2, 60 m/s)')}
    finally:
        env.close()


def test_discounted_return_from_start():
    rewards = np.array([1.0, 2.0, 4.0])
    assert horizon.discounted_from_start(rewards, 0.5) == pytest.approx(1.0 + 1.0 + 1.0)


def test_the_expert_laps_and_the_too_fast_variant_leaves_the_road(drives):
    _, expert_end, expert_sim = drives['expert']
    fast_rewards, fast_end, fast_sim = drives['too fast (40 m/s^2, 60 m/s)']
    assert expert_end == 'lap_complete' and expert_sim > 880.0
    assert fast_end == 'lateral deviation' and fast_sim < 0.8 * expert_sim
    assert len(fast_rewards) > 200  # it drives a while before it goes off


@pytest.mark.parametrize('gamma,lap_preferred', [(0.99, False), (0.998, True)])
def test_the_discount_decides_which_the_objective_prefers(drives, gamma, lap_preferred):
    lap = horizon.discounted_from_start(drives['expert'][0], gamma)
    crash = horizon.discounted_from_start(drives['too fast (40 m/s^2, 60 m/s)'][0], gamma)
    assert (lap > crash) == lap_preferred, (lap, crash)
