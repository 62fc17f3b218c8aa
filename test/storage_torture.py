"""SIGKILL torture of the trainer's storage: replay buffer, policy files, training state.

A writer process does what the trainer does to its run directory, through the same code:
opens the replay buffer (taking the run directory's lock), removes stale temp files, resumes
its step counter from the training state, then appends transitions, writes a
`policy_<step>` file every 4 transitions (never replacing an existing one) and the training
state every 12 (so a kill often leaves policy files newer than the state: the next writer
resumes behind them and reaches their names again, with other weights). It reports what it
committed on stdout. `run_kills` kills such writers with SIGKILL at random moments, restarts
them, and counts committed transitions lost, stale temp files after a restart and policy
names that ever held two contents. Used by test_storage_kills.py (a few kills) and
bench/storage_kills.py (100 kills).
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STATE_FLOATS = 2 * 1024 * 1024  # an 8 MB training state: long enough to be killed inside


def content(index):
    """Return the (frame, kinematics, action, reward) record `index` is written with."""
    frame = np.full((84, 84), index % 251, np.uint8)
    frame[0, :8] = np.frombuffer(int(index).to_bytes(8, 'little'), np.uint8)
    vec = np.full(53, (index % 1000) / 1000.0, np.float32)
    action = np.array([(index % 200) / 200.0 - 0.5, 0.25], np.float32)
    return frame, vec, action, float(index % 97)


def writer_main(run_dir, run_id, capacity):
    """Write like a trainer until killed; print 'R', 'S i', 'A i', 'P step written', 'T'."""
    import torch

    from av_td3_ros.learning.replay_buffer import ReplayBuffer
    from av_td3_ros.policy.checkpoint import (
        CHECKPOINT_SUBDIR,
        TRAINING_STATE,
        PolicySpec,
        policy_path,
        read_metadata,
        remove_stale_run_temps,
        save_policy_state,
        write_atomic,
    )
    run_dir = Path(run_dir)
    buffer = ReplayBuffer.open(run_dir, capacity, check_ram=False, verify=False)
    removed = remove_stale_run_temps(run_dir)  # as the trainer does, after taking the lock
    state_path = run_dir / TRAINING_STATE
    step = int(read_metadata(state_path)['step']) if state_path.exists() else 0
    print(f'R {len(removed)} {step}', flush=True)
    if run_id < 0:  # clean start-up only, then a normal exit
        buffer.close()
        return
    rng = np.random.default_rng(run_id)
    spec = PolicySpec()
    blob = torch.zeros(STATE_FLOATS)
    adds = 0
    while True:
        frame, vec, _, _ = content(buffer.committed)
        print(f'S {buffer.start_episode(frame, vec)}', flush=True)
        for _ in range(int(rng.integers(5, 30))):
            frame, vec, action, reward = content(buffer.committed)
            print(f'A {buffer.add(action, reward, frame, vec, False, False)}', flush=True)
            adds += 1
            if adds % 4 == 0:
                step += 1
                weights = {'w': torch.full((64,), float(run_id * 1_000_000 + step))}
                written = save_policy_state(policy_path(run_dir / CHECKPOINT_SUBDIR, step),
                                            weights, spec, {'step': str(step)}, replace=False)
                print(f'P {step} {int(written)}', flush=True)
            if adds % 12 == 0:
                blob.fill_(float(step))
                write_atomic(state_path, {'blob': blob}, {'step': str(step)})
                print('T', flush=True)


def temp_files(run_dir):
    """Return every file under run_dir that a writer did not mean to leave there.

    Not only our temp names: anything but the buffer's files, the training state and policy
    files counts (a library writing a temp file of its own would show up here).
    """
    from av_td3_ros.policy.checkpoint import POLICY_PATTERN, TRAINING_STATE
    run_dir = Path(run_dir)
    expected_in = {run_dir: re.compile(re.escape(TRAINING_STATE)),
                   run_dir / 'checkpoints': POLICY_PATTERN,
                   run_dir / 'replay_buffer': re.compile(r'[a-z]+\.npy|lock|meta\.json')}
    return sorted(path for path in run_dir.rglob('*') if path.is_file()
                  and not (path.parent in expected_in
                           and expected_in[path.parent].fullmatch(path.name)))


def _start(run_dir, run_id, capacity):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, __file__, str(run_dir), str(run_id),
                             str(capacity)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)


def _hash(path):
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def run_kills(run_dir, kills, seed=0, capacity=20000, max_lines=300, log=None):
    """Kill `kills` writers at random moments; return the figures (see module doc)."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    reported = set()  # transitions (record indices) whose add() returned and was printed
    names = {}  # policy file name -> sha256 of the first content seen under it
    figures = dict(kills=0, temps_left_by_kills=0, kills_leaving_temps=0,
                   stale_after_restart=0, policy_files_written=0, rewrites_refused=0,
                   name_collisions=0, lost=0, committed_reported=0)
    leftovers = []
    for run in range(kills + 1):
        final = run == kills
        proc = _start(run_dir, -1 if final else run, capacity)
        first = proc.stdout.readline()
        if not first.startswith(b'R '):
            proc.kill()
            raise RuntimeError(f'writer did not start: {first!r} {proc.stderr.read()!r}')
        # Temp files the killed writer left are gone once the next one has started.
        figures['stale_after_restart'] += sum(path.exists() for path in leftovers)
        if final:
            proc.wait(timeout=60)
            break
        lines, target = [], int(rng.integers(10, max_lines))
        while len(lines) < target:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f'writer exited: {proc.stderr.read()!r}')
            lines.append(line)
        time.sleep(float(rng.uniform(0, 0.02)))  # land anywhere, often inside a write
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        lines += rest.splitlines(keepends=True)
        figures['kills'] += 1
        for line in lines:
            if not line.endswith(b'\n'):
                continue  # torn by the kill: that call may or may not have completed
            kind, *values = line.split()
            if kind == b'A':
                reported.add(int(values[0]))
            elif kind == b'P':
                figures['policy_files_written'] += int(values[1])
                figures['rewrites_refused'] += 1 - int(values[1])
        leftovers = temp_files(run_dir)
        figures['temps_left_by_kills'] += len(leftovers)
        figures['kills_leaving_temps'] += bool(leftovers)
        for path in sorted((run_dir / 'checkpoints').glob('policy_*.safetensors')):
            digest = _hash(path)
            if digest is not None and names.setdefault(path.name, digest) != digest:
                figures['name_collisions'] += 1
                names[path.name] = digest
        if log is not None and (run + 1) % 10 == 0:
            log(f'{run + 1} kills: {figures}')
    figures['stale_after_restart'] += len(temp_files(run_dir))  # after the final start-up
    figures['committed_reported'] = len(reported)
    figures['lost'] = _count_lost(run_dir, capacity, reported)
    return figures


def _count_lost(run_dir, capacity, reported):
    """Count reported transitions that are missing or differ after the last restart.

    A transition's s stack ends with the record before it, often an episode start: its
    frame carries its index, so starts are checked through the transitions that follow them.
    """
    from av_td3_ros.learning.replay_buffer import ReplayBuffer
    with ReplayBuffer.open(run_dir, capacity, check_ram=False) as buffer:
        lo, end = buffer.window
        assert lo == 0, 'the ring wrapped: raise the capacity'
        indices = np.array(sorted(reported))
        lost = int((indices >= end).sum())
        indices = indices[indices < end]
        ok = buffer.sampleable(indices)
        lost += int((~ok).sum())
        batch = buffer.get(indices[ok])
        for row, index in enumerate(indices[ok]):
            frame, _, action, reward = content(int(index))
            previous = batch.obs_frames[row, -1]
            before = int.from_bytes(previous[0, :8].tobytes(), 'little')
            if not (np.array_equal(batch.next_frames[row, -1], frame)
                    and np.array_equal(batch.actions[row], action)
                    and batch.rewards[row] == np.float32(reward)
                    and before < index and np.array_equal(previous, content(before)[0])):
                lost += 1
    return lost


if __name__ == '__main__':
    writer_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
