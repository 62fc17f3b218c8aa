"""Measure bytes per transition and batch-256 sampling rate of several replay layouts.

Run manually (not part of the tests), after
``.venv/bin/pip install -r requirements-bench.txt``::

    .venv/bin/python bench/replay_memory.py [--capacity 100000] [--small 2000]

Each layout runs in its own subprocess so that resident-memory growth is not confused by
what an earlier case left behind. Numbers are measured, not computed from dtypes: resident
set growth from /proc/self/statm, ``nbytes`` of the allocated arrays, and the sizes of the
memmap files on disk. Layouts:

* ``ours``: av_td3_ros.learning.replay_buffer (one uint8 frame per record, float16 kinematics).
* ``ours-f32``: the same with float32 kinematics.
* ``sb3``/``sb3-opt``: Stable-Baselines3 ReplayBuffer with uint8 Box obs (4, 84, 84),
  without / with ``optimize_memory_usage`` (its sample() also builds torch tensors).
* ``av_td3_system``: the original project's layout, float32 image and next image stacks
  (4, 84, 84) plus float32 vectors; measured at ``--small`` capacity and extrapolated.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
K = 53
A = 2
H = W = 84
STACK = 4
EPISODE_LEN = 1000  # the original project's time limit
BATCH = 256
POOL = 64  # distinct synthetic frames, reused so that filling is not dominated by RNG


def rss_bytes() -> int:
    """Return this process's resident set size from /proc/self/statm."""
    with open('/proc/self/statm', encoding='ascii') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def frame_pool(rng):
    return rng.integers(0, 256, (POOL, H, W), dtype=np.uint8)


def time_sampling(sample, batches):
    """Return (wall-clock, process-CPU-time) batches per second.

    The CPU-time rate is the steadier figure on a shared machine; it can exceed the wall rate
    only when the library samples with several threads.
    """
    for _ in range(5):
        sample()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(batches):
        sample()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return batches / wall, batches / cpu


def case_ours(capacity, batches, vec_dtype):
    sys.path.insert(0, str(REPO))
    from av_td3_ros.learning.replay_buffer import ReplayBuffer

    rng = np.random.default_rng(0)
    pool = frame_pool(rng)
    vecs = rng.standard_normal((POOL, K)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        rss0 = rss_bytes()
        buf = ReplayBuffer.open(tmp, capacity, vec_dtype=vec_dtype)
        t0 = time.perf_counter()
        transitions = 0
        step = EPISODE_LEN
        while buf.committed < capacity:
            if step == EPISODE_LEN:
                buf.start_episode(pool[buf.committed % POOL], vecs[0])
                step = 0
            j = buf.committed % POOL
            buf.add(vecs[j, :A], 0.5, pool[j], vecs[j], False, step + 1 == EPISODE_LEN)
            transitions += 1
            step += 1
        fill_s = time.perf_counter() - t0
        buf.flush()
        files = list(buf.directory.glob('*.npy'))
        file_bytes = sum(p.stat().st_size for p in files)
        disk_bytes = sum(p.stat().st_blocks * 512 for p in files)
        rss_fill = rss_bytes() - rss0
        rate = time_sampling(lambda: buf.sample(BATCH, rng), batches)
        buf.close()
    return {'capacity': capacity, 'transitions': transitions,
            'bytes_per_transition': file_bytes / transitions,
            'disk_blocks_per_transition': disk_bytes / transitions,
            'rss_growth_per_transition': rss_fill / transitions,
            'how': 'sum of memmap file sizes / transitions held',
            'fill_s': fill_s, 'batches_per_s': rate[0], 'batches_per_cpu_s': rate[1]}


def case_sb3(capacity, batches, optimize):
    import warnings

    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer as SB3ReplayBuffer

    warnings.filterwarnings('ignore')
    rng = np.random.default_rng(0)
    pool = frame_pool(rng)
    obs_space = spaces.Box(0, 255, (STACK, H, W), np.uint8)
    act_space = spaces.Box(-1.0, 1.0, (A,), np.float32)
    rss0 = rss_bytes()
    buf = SB3ReplayBuffer(capacity, obs_space, act_space, device='cpu', n_envs=1,
                          optimize_memory_usage=optimize,
                          handle_timeout_termination=not optimize)
    t0 = time.perf_counter()
    act = np.zeros((1, A), np.float32)
    rew = np.zeros(1, np.float32)
    done = np.zeros(1, np.float32)
    info = [{}]
    for i in range(capacity):
        idx = np.arange(i, i + STACK + 1) % POOL
        obs = pool[idx[:STACK]][None]
        nxt = pool[idx[1:]][None]
        buf.add(obs, nxt, act, rew, done, info)
    fill_s = time.perf_counter() - t0
    rss_fill = rss_bytes() - rss0
    nbytes = sum(getattr(buf, name).nbytes for name in
                 ('observations', 'next_observations', 'actions', 'rewards', 'dones',
                  'timeouts') if getattr(buf, name, None) is not None)
    rate = time_sampling(lambda: buf.sample(BATCH), batches)
    return {'capacity': capacity, 'transitions': capacity,
            'bytes_per_transition': nbytes / capacity,
            'rss_growth_per_transition': rss_fill / capacity,
            'how': 'nbytes of its arrays after filling / transitions',
            'fill_s': fill_s, 'batches_per_s': rate[0], 'batches_per_cpu_s': rate[1]}


def case_av_td3(capacity, batches):
    # The original layout (facts from docs: float32 stacks for s and s', float32 vectors);
    # arrays are created the way numpy does it there (zeros, filled in place).
    rng = np.random.default_rng(0)
    pool = frame_pool(rng).astype(np.float32) / 127.5 - 1.0
    rss0 = rss_bytes()
    arrays = {
        'image': np.zeros((capacity, STACK, H, W), np.float32),
        'next_image': np.zeros((capacity, STACK, H, W), np.float32),
        'vector': np.zeros((capacity, K), np.float32),
        'next_vector': np.zeros((capacity, K), np.float32),
        'action': np.zeros((capacity, A), np.float32),
        'reward': np.zeros((capacity, 1), np.float32),
        'not_done': np.zeros((capacity, 1), np.float32),
    }
    t0 = time.perf_counter()
    for i in range(capacity):
        idx = np.arange(i, i + STACK + 1) % POOL
        arrays['image'][i] = pool[idx[:STACK]]
        arrays['next_image'][i] = pool[idx[1:]]
        arrays['vector'][i] = 0.1
        arrays['next_vector'][i] = 0.2
        arrays['action'][i] = 0.0
        arrays['reward'][i] = 1.0
        arrays['not_done'][i] = 1.0
    fill_s = time.perf_counter() - t0
    rss_fill = rss_bytes() - rss0
    nbytes = sum(a.nbytes for a in arrays.values())

    def sample():
        ind = rng.integers(0, capacity, BATCH)
        return {k: a[ind] for k, a in arrays.items()}

    rate = time_sampling(sample, batches)
    return {'capacity': capacity, 'transitions': capacity,
            'bytes_per_transition': nbytes / capacity,
            'rss_growth_per_transition': rss_fill / capacity,
            'how': 'nbytes of its arrays after filling / transitions',
            'fill_s': fill_s, 'batches_per_s': rate[0], 'batches_per_cpu_s': rate[1]}


def run_case(name, capacity, batches):
    if name == 'ours':
        return case_ours(capacity, batches, 'float16')
    if name == 'ours-f32':
        return case_ours(capacity, batches, 'float32')
    if name == 'sb3':
        return case_sb3(capacity, batches, False)
    if name == 'sb3-opt':
        return case_sb3(capacity, batches, True)
    if name == 'av_td3_system':
        return case_av_td3(capacity, batches)
    raise ValueError(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--capacity', type=int, default=100_000)
    parser.add_argument('--small', type=int, default=2000,
                        help='capacity for the float32 av_td3_system layout')
    parser.add_argument('--batches', type=int, default=200)
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.capacity, args.batches)))
        return
    cases = [('ours', args.capacity), ('ours-f32', args.capacity), ('sb3', args.capacity),
             ('sb3-opt', args.capacity), ('av_td3_system', args.small)]
    results = {}
    for name, cap in cases:
        proc = subprocess.run(
            [sys.executable, __file__, '--case', name, '--capacity', str(cap),
             '--batches', str(args.batches)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f'{name}: failed\n{proc.stderr[-2000:]}')
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = results.get('ours')
    print(f'replay layouts, {H}x{W} frames, stack {STACK}, K={K}, A={A}, batch {BATCH} '
          f'(numbers measured; av_td3_system at {args.small} and extrapolated)')
    head = (f'{"layout":<15}{"capacity":>9}{"B/transition":>14}{"RSS B/tr":>11}'
            f'{"x ours":>8}{"GB @ " + str(args.capacity // 1000) + "k":>11}'
            f'{"batch/s":>9}{"/cpu-s":>8}{"fill s":>7}  measured as')
    print(head)
    print('-' * len(head))
    for name, r in results.items():
        bpt = r['bytes_per_transition']
        ratio = bpt / ours['bytes_per_transition'] if ours else float('nan')
        gb = bpt * args.capacity / 1e9
        label = '' if r['capacity'] == args.capacity else ' (extrapolated)'
        print(f'{name:<15}{r["capacity"]:>9}{bpt:>14.1f}'
              f'{r["rss_growth_per_transition"]:>11.1f}{ratio:>8.2f}{gb:>11.2f}'
              f'{r["batches_per_s"]:>9.1f}{r["batches_per_cpu_s"]:>8.1f}{r["fill_s"]:>7.1f}'
              f'  {r["how"]}{label}')
    if ours:
        print(f'ours on-disk blocks per transition: {ours["disk_blocks_per_transition"]:.1f} B '
              f'(includes one episode-start record per {EPISODE_LEN} steps and the spare '
              'slot); ours RSS counts the memmap pages touched, not extra copies.')
    print('sb3 sample() also converts to torch tensors; ours and av_td3_system return numpy. '
          'batch/s = wall clock, /cpu-s = per second of process CPU time, both batch 256; '
          f'load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.')


if __name__ == '__main__':
    main()
