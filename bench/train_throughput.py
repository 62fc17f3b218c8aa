"""Measure TD3 gradient updates per second on CPU: av_td3_ros vs Stable-Baselines3.

Both learners get the same synthetic uint8 frames (4, 84, 84), the same batch size and the
same torch thread count. SB3 runs TD3 with CnnPolicy (NatureCNN, features_dim 512,
net_arch [256, 256]); its images are normalised /255 inside the policy. Our agent also gets
the 53-value kinematic vector (state_dim 565 instead of 512), so it does slightly more work.
Only gradient updates are timed: SB3 via `model.train(gradient_steps=N, batch_size=B)`
(which samples its replay buffer inside), ours via numpy sampling + `TD3.update`.
Blocks of both are interleaved, so load from other processes affects both sides alike; the
best block (and the median) per learner is reported.

`ours` runs at `--precision` (default auto: bf16 on CPUs with AMX/AVX512-BF16, as the trainer
does); the default `--variants precision=fp32` also times float32 updates in the same run.

Usage: python bench/train_throughput.py [--updates 10] [--threads 2] [--batch-sizes 256,64]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from av_td3_ros.learning.replay_buffer import Batch
from av_td3_ros.learning.td3 import TD3, TD3Config
from av_td3_ros.policy.networks import NetworkConfig

FRAMES = (4, 84, 84)
KINEMATIC_DIM = 53
ACTION_DIM = 2


class SyntheticData:
    """Fixed random uint8 transitions; `sample` fancy-indexes them like a replay buffer."""

    def __init__(self, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.obs = rng.integers(0, 256, (size, *FRAMES), dtype=np.uint8)
        self.next_obs = rng.integers(0, 256, (size, *FRAMES), dtype=np.uint8)
        self.vec = rng.normal(size=(size, KINEMATIC_DIM)).astype(np.float32)
        self.next_vec = rng.normal(size=(size, KINEMATIC_DIM)).astype(np.float32)
        self.actions = rng.uniform(-1, 1, (size, ACTION_DIM)).astype(np.float32)
        self.rewards = rng.normal(size=size).astype(np.float32)
        self.terminated = (rng.random(size) < 0.01).astype(np.float32)
        self.truncated = (rng.random(size) < 0.01).astype(np.float32)

    def __len__(self) -> int:
        return len(self.rewards)

    def sample(self, batch_size: int) -> Batch:
        """Return `batch_size` transitions drawn uniformly with replacement."""
        idx = self.rng.integers(0, len(self), batch_size)
        return Batch(self.obs[idx], self.vec[idx], self.actions[idx], self.rewards[idx],
                     self.next_obs[idx], self.next_vec[idx], self.terminated[idx],
                     self.truncated[idx])


def make_sb3(data: SyntheticData, batch_size: int):
    """Build SB3 TD3 on a dummy env and copy `data` into its replay buffer."""
    import gymnasium as gym
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.logger import Logger

    class DummyEnv(gym.Env):
        observation_space = gym.spaces.Box(0, 255, FRAMES, np.uint8)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    model = SB3TD3('CnnPolicy', DummyEnv(), buffer_size=len(data), batch_size=batch_size,
                   learning_starts=0, device='cpu', verbose=0,
                   policy_kwargs={'net_arch': [256, 256],
                                  'features_extractor_kwargs': {'features_dim': 512}})
    model.set_logger(Logger(folder=None, output_formats=[]))
    buffer = model.replay_buffer
    buffer.observations[:] = data.obs[:, None]
    buffer.next_observations[:] = data.next_obs[:, None]
    buffer.actions[:] = data.actions[:, None]
    buffer.rewards[:] = data.rewards[:, None]
    buffer.dones[:] = data.terminated[:, None]
    buffer.timeouts[:] = data.truncated[:, None]
    buffer.full = True
    return model


def time_ours(agent: TD3, data: SyntheticData, batch_size: int, updates: int) -> float:
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(data.sample(batch_size))
    return (time.perf_counter() - start) / updates


def time_sb3(model, batch_size: int, updates: int) -> float:
    start = time.perf_counter()
    model.train(gradient_steps=updates, batch_size=batch_size)
    return (time.perf_counter() - start) / updates


def parse_variant(text: str) -> dict:
    """Parse 'name=value,name=value' TD3Config overrides (bools and strings)."""
    overrides = {}
    for item in filter(None, text.split(',')):
        key, value = item.split('=')
        overrides[key] = {'True': True, 'False': False}.get(value, value)
    return overrides


def breakdown(agent: TD3, data: SyntheticData, batch_size: int, updates: int):
    """Print where one update's time goes, from torch.profiler labels in TD3.update."""
    labels = ('bench.sample', 'td3.prepare', 'td3.target', 'td3.critic_forward',
              'td3.critic_backward', 'td3.critic_optim', 'td3.actor_forward',
              'td3.actor_backward', 'td3.actor_optim', 'td3.polyak')
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            with torch.profiler.record_function('bench.sample'):
                batch = data.sample(batch_size)
            agent.update(batch)
    totals, ops = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        if event.key in labels:
            totals[event.key] += event.cpu_time_total / 1000.0 / updates
        elif not event.key.startswith(('td3.', 'bench.', 'autograd::', 'Optimizer')):
            ops[event.key] += event.self_cpu_time_total / 1000.0 / updates
    # Backward runs in autograd's engine: the *_backward labels wrap loss.backward().
    print(f'  breakdown at batch {batch_size} (ms per update, averaged over {updates} updates, '
          'actor/polyak run every 2nd update; profiler overhead included):')
    for label in labels:
        print(f'    {label:22s} {totals[label]:8.1f}')
    print(f'    {"sum":22s} {sum(totals.values()):8.1f}')
    print('  top ops by self time (ms per update):')
    for key, value in sorted(ops.items(), key=lambda kv: -kv[1])[:8]:
        print(f'    {key:34s} {value:8.1f}')


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--updates', type=int, default=10, help='updates per timed block')
    parser.add_argument('--blocks', type=int, default=3, help='interleaved blocks per side')
    parser.add_argument('--warmup', type=int, default=3, help='untimed updates per learner')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--batch-sizes', default='256,64')
    parser.add_argument('--buffer', type=int, default=2048, help='synthetic transitions')
    parser.add_argument('--precision', default='auto', help='precision of `ours` (TD3Config)')
    parser.add_argument('--variants', default='precision=fp32',
                        help="extra TD3Config overrides to time, ';'-separated, e.g. "
                             "'channels_last=False;optimizer_impl=foreach'")
    parser.add_argument('--profile-updates', type=int, default=6,
                        help='updates profiled for the breakdown (0: skip)')
    parser.add_argument('--no-sb3', action='store_true', help='skip the SB3 baseline')
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    print(f'date {datetime.datetime.now().isoformat(timespec="seconds")}  nproc '
          f'{os.cpu_count()}  cpu "{cpu_model()}"  torch {torch.__version__}  threads '
          f'{torch.get_num_threads()}  load {os.getloadavg()[0]:.2f}')
    data = SyntheticData(args.buffer)
    variants = [{}] + [parse_variant(v) for v in args.variants.split(';') if v]
    net = NetworkConfig(kinematic_dim=KINEMATIC_DIM)
    for batch_size in (int(b) for b in args.batch_sizes.split(',')):
        learners = {}
        for overrides in variants:
            name = 'ours' + (f'[{",".join(f"{k}={v}" for k, v in overrides.items())}]'
                             if overrides else '')
            settings = {'precision': args.precision, **overrides}
            agent = TD3(net, TD3Config(device='cpu', seed=0, batch_size=batch_size,
                                       **settings))
            time_ours(agent, data, batch_size, args.warmup)
            learners[name] = (lambda a=agent, b=batch_size: time_ours(a, data, b, args.updates))
        if not args.no_sb3:
            model = make_sb3(data, batch_size)
            time_sb3(model, batch_size, args.warmup)
            learners['sb3'] = (lambda m=model, b=batch_size: time_sb3(m, b, args.updates))
        times = defaultdict(list)
        for _ in range(args.blocks):
            for name, run in learners.items():
                times[name].append(run())
        print(f'batch {batch_size}: {args.blocks} blocks x {args.updates} updates, '
              f'load {os.getloadavg()[0]:.2f}')
        # Best block = least disturbed by other processes (as timeit advises); median shown.
        best = {name: min(t) for name, t in times.items()}
        for name, seconds in best.items():
            median = statistics.median(times[name])
            ratio = ''
            if 'sb3' in best and name != 'sb3':
                ratio = (f'  ours/sb3 speed {best["sb3"] / seconds:.2f}x best, '
                         f'{statistics.median(times["sb3"]) / median:.2f}x median')
            print(f'  {name:36s} best {1000 * seconds:7.1f} ms/update {1 / seconds:6.2f} '
                  f'updates/s, median {1000 * median:7.1f} ms{ratio}')
        if args.profile_updates:
            agent = TD3(net, TD3Config(device='cpu', seed=0, batch_size=batch_size,
                                       precision=args.precision))
            time_ours(agent, data, batch_size, 2)
            breakdown(agent, data, batch_size, args.profile_updates)


if __name__ == '__main__':
    main()
