"""A training run's files besides its replay buffer: policies, resume state and logs (no ROS).

`checkpoints/policy_<step>.safetensors` (what drivers load), `training_state.safetensors`
(TD3's state plus the learner's counters, Monte Carlo returns and start policy: enough for
an exact resume), `episodes.jsonl` and TensorBoard logs (`tb/`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from av_td3_ros.config_diff import config_differences
from av_td3_ros.policy.checkpoint import (
    CHECKPOINT_SUBDIR,
    POLICY_PATTERN,
    TRAINING_STATE,
    PolicySpec,
    latest_policy,
    policy_path,
    prune_policies,
    read_safetensors,
    remove_stale_run_temps,
    save_policy_state,
    write_atomic,
)
from av_td3_ros.throttled_log import ThrottledLog

LEARNER_TENSORS = 'learner.'
"""Prefix of the state-file tensors the learner adds to TD3's (returns, the start policy)."""
START_POLICY_TENSORS = LEARNER_TENSORS + 'start_policy.'


def resume_differences(spec: PolicySpec, metadata: dict) -> list[str]:
    """Name every PolicySpec field in which a training state differs from `spec`."""
    saved = json.loads(metadata['spec'])
    return config_differences(spec.to_dict(), saved, ('trainer', 'training state'))


class ResumeError(ValueError):
    """A training state this run cannot continue (another policy spec)."""


class RunDirectory:
    """Write and read one run's policy files, training state and logs."""

    def __init__(self, path: Path, spec: PolicySpec, keep_checkpoints: int, log):
        """Create `path` and its checkpoints/ folder; `log` has info/warning/error."""
        self.path = path
        self.spec = spec
        self.keep_checkpoints = keep_checkpoints
        self.log = log
        self.log_throttled = ThrottledLog(log)
        self.state_path = path / TRAINING_STATE
        path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = path / CHECKPOINT_SUBDIR
        self.checkpoint_dir.mkdir(exist_ok=True)
        self.tb = None
        self._episode_log = None

    def remove_stale_temps(self):
        """Delete the temp files of a killed writer (hold the buffer's writer lock)."""
        for stale in remove_stale_run_temps(self.path):
            self.log.warning(f'removed {stale}, left by a writer killed mid-write')

    def read_state(self) -> tuple | None:
        """Return TD3's (tensors, metadata), counters, returns and start policy, or None.

        Raise ResumeError when the state was trained with another policy spec.
        """
        path = self.state_path
        if not path.exists():
            return None
        tensors, metadata = read_safetensors(path)  # one read: tensors and metadata agree
        td3_metadata = json.loads(metadata['td3'])
        diffs = resume_differences(self.spec, metadata)
        if diffs:
            raise ResumeError(f'cannot resume {path}: it was trained with another policy '
                              'spec: ' + '; '.join(diffs) + ' (set the same parameters, or '
                              'use another run_dir)')
        mine = {k: tensors.pop(k) for k in list(tensors) if k.startswith(LEARNER_TENSORS)}
        start = {k[len(START_POLICY_TENSORS):]: v for k, v in mine.items()
                 if k.startswith(START_POLICY_TENSORS)}
        returns = (mine['learner.mc_returns'].numpy(), mine['learner.mc_indices'].numpy())
        return (tensors, td3_metadata), json.loads(metadata['counters']), returns, start

    def write_state(self, agent_state: tuple[dict, dict], counters: dict,
                    returns: tuple[np.ndarray, np.ndarray], start_policy=None):
        """Write TD3's `agent_state` and the learner's part atomically."""
        tensors, metadata = agent_state
        tensors['learner.mc_returns'] = torch.from_numpy(returns[0])
        tensors['learner.mc_indices'] = torch.from_numpy(returns[1])
        if start_policy is not None:
            for key, value in start_policy.state_dict().items():
                tensors[START_POLICY_TENSORS + key] = value.detach().cpu().contiguous()
        write_atomic(self.state_path, tensors,
                     {'td3': json.dumps(metadata), 'counters': json.dumps(counters),
                      'spec': json.dumps(self.spec.to_dict())})

    def warn_if_newer_policy(self, updates: int):
        """Warn when a policy file is newer than a resumed state of `updates` updates."""
        newest = latest_policy(self.checkpoint_dir)
        newest_step = int(POLICY_PATTERN.match(newest.name).group(1)) if newest else -1
        if newest_step > updates:
            self.log.warning(
                f'{newest.name} is newer than the resumed state ({updates} '
                'updates; the previous run ended between a policy save and a state save): '
                'existing policy files are kept, never rewritten with other weights')

    def save_policy(self, state: dict[str, torch.Tensor], step: int, on_saved=None) -> bool:
        """Write `policy_<step>` unless it exists (return False then) and prune old ones.

        A name always means the same weights, for drivers that loaded it and readers mid-load.
        """
        path = policy_path(self.checkpoint_dir, step)
        written = save_policy_state(path, state, self.spec, {'step': str(step)}, replace=False)
        if on_saved is not None:
            on_saved(path, step)
        if not written:
            self.log_throttled('warning', 'policy_exists', f'{path.name} exists (an earlier '
                               'run reached this step): kept, not rewritten', period=60.0)
        prune_policies(self.checkpoint_dir, self.keep_checkpoints)
        return written

    def latest_policy(self) -> Path | None:
        """Return the newest policy file of the run (None before the first)."""
        return latest_policy(self.checkpoint_dir)

    def open_logs(self, tensorboard: bool, tensorboard_dir: Path | None = None):
        """Open episodes.jsonl for appending and, with `tensorboard`, a TensorBoard writer."""
        self._episode_log = open(self.path / 'episodes.jsonl', 'a', buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(tensorboard_dir or self.path / 'tb'))

    def scalars(self, section: str, values: dict[str, float], step: int):
        """Add `section/<name>` scalars to TensorBoard (nothing without it)."""
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f'{section}/{name}', value, step)

    def log_episode(self, record: dict, env_steps: int):
        """Append one finished episode to episodes.jsonl and TensorBoard."""
        self._episode_log.write(json.dumps(record) + '\n')
        self.scalars('episode', {'return': record['return'], 'length': record['length']},
                     env_steps)

    def close(self):
        """Close the episode log and TensorBoard."""
        if self._episode_log is not None:
            self._episode_log.close()
        if self.tb is not None:
            self.tb.close()
