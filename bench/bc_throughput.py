"""Measure behaviour-cloning updates (batch 64) in float32 and bfloat16, and their loss curves.

Both precisions train the same ActorPolicy initialisation on the same fixed synthetic batches
(stacked uint8-derived frames and a learnable target: the label is a fixed random linear map
of the mean image and the kinematics), through `imitation.bc_step`, the recipe's own update
(bf16 as the imitation trainer runs it: autocast on channels_last weights and frames).
Timed blocks of both are interleaved, so other load affects both alike; the best block and
the median per precision are reported with the bf16/fp32 speed ratio, then the loss at
checkpoints of a longer run of each (learning parity).

Usage: python bench/bc_throughput.py [--updates 20] [--blocks 3] [--threads 1] [--curve 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from av_td3_ros.learning.imitation import bc_step, use_fast_layout
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig


def make_batches(count: int, batch: int, seed: int = 0):
    """Return `count` (frames, kinematics, labels) float32 batches with learnable labels."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(2, 4 + 53)).astype(np.float32) / 8.0
    batches = []
    for _ in range(count):
        frames = (rng.integers(0, 256, (batch, 4, 84, 84)) / 127.5 - 1.0).astype(np.float32)
        kinematics = rng.normal(size=(batch, 53)).astype(np.float32)
        inputs = np.concatenate([frames.mean(axis=(2, 3)), kinematics], axis=1)
        labels = np.tanh(inputs @ mix.T).astype(np.float32)
        batches.append(tuple(torch.from_numpy(x) for x in (frames, kinematics, labels)))
    return batches


def learner(seed: int = 0, bf16: bool = False):
    """Return a fresh (policy, Adam) pair for `seed`, laid out as the trainer lays it out."""
    torch.manual_seed(seed)
    policy = ActorPolicy(NetworkConfig(feature_norm='layernorm_tanh'))
    if bf16:
        use_fast_layout(policy)
    return policy, torch.optim.Adam(policy.parameters(), lr=3e-4)


def main(argv=None):
    """Time both precisions in interleaved blocks, then print their loss curves."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--updates', type=int, default=20, help='updates per timed block')
    parser.add_argument('--blocks', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--curve', type=int, default=300, help='updates of the parity run')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = make_batches(16, args.batch)
    print(f'torch {torch.__version__}, threads {args.threads}, batch {args.batch}, '
          f'load {os.getloadavg()[0]:.2f}')
    runs = {'fp32': (*learner(), False), 'bf16': (*learner(bf16=True), True)}
    times = {name: [] for name in runs}
    for policy, optimizer, bf16 in runs.values():  # warm-up
        for frames, kinematics, labels in batches[:3]:
            bc_step(policy, optimizer, frames, kinematics, labels, bf16)
    for _ in range(args.blocks):
        for name, (policy, optimizer, bf16) in runs.items():
            start = time.perf_counter()
            for i in range(args.updates):
                bc_step(policy, optimizer, *batches[i % len(batches)], bf16)
            times[name].append((time.perf_counter() - start) / args.updates)
    for name, block in times.items():
        print(f'  {name}: best {1000 * min(block):6.1f} ms/update, median '
              f'{1000 * statistics.median(block):6.1f} ms')
    print(f'  bf16/fp32 speed: {min(times["fp32"]) / min(times["bf16"]):.2f}x best, '
          f'{statistics.median(times["fp32"]) / statistics.median(times["bf16"]):.2f}x median')

    print(f'loss curves over {args.curve} updates (same batches; the second fp32 run starts '
          'from another seed: run-to-run noise), mean of 20:')
    curves = {}
    for name, bf16, seed in (('fp32', False, 1), ('bf16', True, 1), ('fp32 seed 2', False, 2)):
        policy, optimizer = learner(seed=seed, bf16=bf16)
        curves[name] = [bc_step(policy, optimizer, *batches[i % len(batches)], bf16)
                        for i in range(args.curve)]
    marks = sorted({20, args.curve // 4, args.curve // 2, args.curve})
    for mark in marks:
        values = '  '.join(f'{name} {np.mean(curve[max(mark - 20, 0):mark]):.5f}'
                           for name, curve in curves.items())
        print(f'  updates {mark - 20:4d}-{mark:4d}: {values}')


if __name__ == '__main__':
    main()
