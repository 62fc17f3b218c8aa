"""Which driving does the trainer's objective prefer? Discounted shaped returns of expert variants.

    python bench/objective_horizon.py [--tracks 7100-7104] [--gammas 0.99,0.995,0.998]

TD3 maximises the discounted sum of the trainer's shaped reward from each state. This bench
drives the route expert and variants of it that corner faster or slower (its lateral
acceleration limit) through `sim/gym_env.SimGymEnv` - the trainer's reward and episode
rules: the episode ends at the 6.5 m lateral limit - and prints, per variant and track,
how long it drove, the simulator's return (a lap is ~900) and the discounted shaped return
from the start, G0, for each discount factor. A variant that leaves the road but has the
higher G0 is what a learner with that discount is pulled towards
(docs/research/td3-finetuning.md).

No learning and no randomness: the expert is deterministic, so one run is the measurement.
The tracks are held out from every recipe and test (7100+).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from av_td3_ros.experts.route_expert import ExpertConfig, expert_action_from_kinematics  # noqa: E402
from av_td3_ros.sim.evaluation import parse_seeds  # noqa: E402
from av_td3_ros.sim.gym_env import SimGymEnv  # noqa: E402

VARIANTS = {
    'expert': ExpertConfig(),
    'slower corners (8 m/s^2)': replace(ExpertConfig(), lateral_accel=8.0),
    'faster corners (25 m/s^2)': replace(ExpertConfig(), lateral_accel=25.0),
    'too fast (40 m/s^2, 60 m/s)': replace(ExpertConfig(), lateral_accel=40.0,
                                           max_speed=60.0),
}
"""Expert settings driven; the last corners faster than the stand-in's grip allows."""


def discounted_from_start(rewards: np.ndarray, gamma: float) -> float:
    """Return sum_t gamma^t r_t."""
    return float(np.sum(rewards * gamma ** np.arange(len(rewards))))


def drive(env: SimGymEnv, track: int, config: ExpertConfig) -> tuple[np.ndarray, str, float]:
    """Drive one episode; return the shaped rewards, the end reason and the simulator return."""
    observation, _ = env.reset(seed=track)
    rewards, done, info = [], False, {}
    while not done:
        action = expert_action_from_kinematics(observation['kinematics'], env.features, config)
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return np.asarray(rewards), info['reason'], info['sim_return']


def main(argv=None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tracks', default='7100-7104')
    parser.add_argument('--gammas', default='0.99,0.995,0.998')
    args = parser.parse_args(argv)
    tracks = parse_seeds(args.tracks)
    gammas = [float(g) for g in args.gammas.split(',')]
    env = SimGymEnv(kinematic_inputs='all')
    try:
        g0 = {}
        print('variant | track | steps | end | sim return | ' +
              ' | '.join(f'G0 @ {g}' for g in gammas))
        for name, config in VARIANTS.items():
            for track in tracks:
                rewards, reason, sim_return = drive(env, track, config)
                values = [discounted_from_start(rewards, g) for g in gammas]
                g0[name, track] = values
                print(f'{name} | {track} | {len(rewards)} | {reason} | {sim_return:.1f} | '
                      + ' | '.join(f'{v:.0f}' for v in values), flush=True)
    finally:
        env.close()
    print('\nG0 relative to the expert, mean over tracks (and tracks where it is higher):')
    for name in VARIANTS:
        cells = []
        for index, gamma in enumerate(gammas):
            ratios = [g0[name, t][index] / g0['expert', t][index] for t in tracks]
            higher = sum(ratio > 1.0 for ratio in ratios)
            cells.append(f'@{gamma}: {np.mean(ratios):.3f} ({higher}/{len(tracks)})')
        print(f'{name}: ' + ', '.join(cells))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
