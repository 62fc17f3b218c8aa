"""The trainer's update schedule without ROS: replay buffer, BC pretraining, TD3 updates.

`Learner` takes experience through `store` (the typed output of `TransitionAssembler`) from
any thread and runs updates through `maybe_update` or `run_updates` in one worker thread;
the buffer lock is the only lock: storing and sampling never overlap. Its run directory's
other files (policies, training state, logs) are `run_dir.RunDirectory`'s.

The schedule, one update at a time:
1. nothing before `learning_starts` transitions are stored (and more than a batch);
2. `bc_pretrain_updates` behaviour-cloning steps of the actor towards the route expert's
   action on each sampled transition's stored kinematics; the targets then copy the actor;
3. TD3 updates (TD3+BC with `td3.bc_weight` > 0, labels from `bc_labels`) while
   `td3_updates < env_steps * updates_per_step`; during the critic warm-up the critic's
   targets are the finished episodes' Monte Carlo returns (TD where an episode is open).
Policy files are named by `updates` (BC and TD3 steps together).

Resume is exact: the state holds the networks, Adam moments, the smoothing-noise generator,
the counters, the batch sampler's generator and the Monte Carlo returns, and the buffer is
on disk; a resumed run samples and updates exactly as an uninterrupted one would.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from av_td3_ros.experts.route_expert import ExpertConfig, expert_actions
from av_td3_ros.learning.device_batch import DeviceBatch
from av_td3_ros.learning.evaluations import EvaluationRecorder
from av_td3_ros.learning.mc_returns import MonteCarloReturns
from av_td3_ros.learning.replay_buffer import Batch, ReplayBuffer
from av_td3_ros.learning.run_dir import ResumeError, RunDirectory, resume_differences
from av_td3_ros.learning.td3 import TD3, TD3Config, metrics_to_floats
from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.task.episode_label import EpisodeLabel
from av_td3_ros.task.transitions import AssemblerOutput, EpisodeEnd, EpisodeStart, Transition
from av_td3_ros.validation import check_choice

__all__ = ['BC_LABELS', 'Learner', 'LearnerConfig', 'ResumeError', 'resume_differences']

BC_LABELS = ('expert', 'start')
"""Sources of the TD3+BC term's target actions: the route expert, or the policy TD3 started
from (`initial_policy`, after any BC pretraining)."""


@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    """What a training run needs besides its experience (the trainer's parameters, less ROS)."""

    run_dir: Path
    """Replay buffer, checkpoints/, training_state.safetensors, episodes.jsonl, tb/."""
    spec: PolicySpec
    """What the actor sees and how; every policy file and the state carry it."""
    td3: TD3Config
    seed: int
    """Seed of the batch sampler (TD3 seeds its networks and noise from `td3.seed`)."""
    resume: bool
    """Continue from run_dir/training_state.safetensors if present."""
    buffer_capacity: int
    buffer_kinematics_dtype: str
    learning_starts: int
    """Stored transitions before the first update (BC or TD3)."""
    updates_per_step: float
    """TD3 updates per stored transition (BC pretraining steps do not count)."""
    checkpoint_every: int
    keep_checkpoints: int
    state_every: int
    health_every: int
    tensorboard: bool
    initial_policy: str = ''
    """A fresh run's actor starts from this policy file ('' = random init)."""
    bc_pretrain_updates: int = 0
    """Behaviour-cloning steps of the actor on the route expert's labels before TD3 (0: off)."""
    expert: ExpertConfig = ExpertConfig()
    """The route expert's settings for BC labels (the driver's expert.* parameters)."""
    bc_labels: str = 'expert'
    """What the TD3+BC term pulls the actor towards: expert (the route expert's action on the
    stored kinematics) or start (the action of the policy TD3 started from, frozen: a trust
    region around a policy known to drive, with no expert needed)."""

    def __post_init__(self):
        """Refuse unknown choices by name (a typo must not silently pick another rule)."""
        check_choice('bc_labels', self.bc_labels, BC_LABELS)


class Learner:
    """Store experience and train the actor on the trainer's schedule (no ROS)."""

    def __init__(self, config: LearnerConfig, log=None, tensorboard_dir: Path | None = None,
                 on_policy_saved=None):
        """Open the run directory's buffer and agent, resuming if asked.

        `log` has info/warning/error methods; `tensorboard_dir` overrides run_dir/tb;
        `on_policy_saved(path, step)` is called after every policy save.
        """
        self.config = config
        self.log = log or logging.getLogger('av_td3_ros.learner')
        self.on_policy_saved = on_policy_saved
        self.run = RunDirectory(config.run_dir, config.spec, config.keep_checkpoints, self.log)
        # Opening the buffer takes the run directory's writer lock: from here on no other
        # learner writes here, so every temp file found is a killed writer's.
        self.buffer = ReplayBuffer.open(
            config.run_dir, config.buffer_capacity,
            vec_dim=config.spec.network.kinematic_dim,
            action_dim=config.spec.network.action_dim,
            vec_dtype=config.buffer_kinematics_dtype,
            stack=config.spec.preprocessing.frame_stack,
            fill_mode=config.spec.preprocessing.stack_fill)
        self.buffer_lock = threading.Lock()
        self.log_throttled = self.run.log_throttled
        self._broken_streams: set = set()
        self.unstored = 0  # assembled items the buffer refused (and steps skipped after one)
        self.env_steps = 0
        self.episodes = 0
        self.bc_updates = 0
        self.recent_returns: list[float] = []
        self.updates_since_log = 0
        self._bc_losses: list[float] = []  # first and latest pretraining losses, for the log
        self.returns = MonteCarloReturns(config.buffer_capacity + 1, config.td3.gamma)
        self.start_policy: ActorPolicy | None = None  # bc_labels 'start': frozen at TD3's start
        self.rng: np.random.Generator | None = None
        try:
            self.run.remove_stale_temps()
            self.agent = TD3(config.spec.network, config.td3)
            self._resume()
            if self.updates == 0 and config.initial_policy:
                self._start_from(config.initial_policy)
        except BaseException:
            self.buffer.close()
            raise
        if self.rng is None:  # a fresh run
            self.rng = np.random.default_rng(config.seed + self.agent.total_updates)
        self.run.open_logs(config.tensorboard, tensorboard_dir)
        self.evaluations = EvaluationRecorder(config.run_dir, self.run.checkpoint_dir, self.log,
                                              self.run.scalars)

    @property
    def updates(self) -> int:
        """Return the gradient steps done: BC pretraining plus TD3 critic steps."""
        return self.bc_updates + self.agent.total_updates

    @property
    def tb(self):
        """Return the run's TensorBoard writer (None without TensorBoard)."""
        return self.run.tb

    def _resume(self):
        saved = self.run.read_state() if self.config.resume else None
        if saved is None:
            return
        agent_state, counters, returns, start = saved
        self.agent.load_state_tensors(*agent_state)
        # The buffer may hold more than the state recorded (written after the last save).
        self.env_steps = max(int(counters['env_steps']), 0)
        self.episodes = int(counters['episodes'])
        self.bc_updates = int(counters['bc_updates'])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = counters['sampler']
        self.returns.load_state(*returns)
        if start:
            self.start_policy = self._frozen_policy(start)
        bc = f' (+ {self.bc_updates} BC)' if self.bc_updates else ''
        self.log.info(f'resumed {self.run.state_path}: {self.agent.total_updates} updates'
                      f'{bc}, {self.env_steps} env steps, buffer {self.buffer.size}')
        self.run.warn_if_newer_policy(self.updates)

    def _start_from(self, path: str):
        """Start the actor (and its target) from a policy checkpoint with the run's spec."""
        policy, _ = load_policy(path, expected=self.config.spec)
        state = {k: v.detach().float() for k, v in policy.state_dict().items()}
        self.agent.load_policy_state(state)
        self.log.info(f'actor starts from {path}')

    def save_state(self):
        """Write networks, optimisers, counters and sampler state atomically; flush the buffer."""
        with self.buffer_lock:
            self.buffer.flush()
            counters = {'env_steps': self.env_steps, 'episodes': self.episodes,
                        'bc_updates': self.bc_updates,
                        'sampler': self.rng.bit_generator.state}
            returns = self.returns.state()
        self.run.write_state(self.agent.state_tensors(), counters, returns, self.start_policy)

    def save_policy(self) -> bool:
        """Write the current policy where drivers look for it (False: kept) and prune."""
        return self.run.save_policy(self.agent.policy_state(), self.updates,
                                    self.on_policy_saved)

    def latest_policy(self) -> Path | None:
        """Return the newest policy file of the run (None before the first)."""
        return self.run.latest_policy()

    def begin_evaluation(self, role: str, policy: str | None):
        """Keep a copy of the policy an evaluation starts with; see evaluations.py."""
        self.evaluations.begin(role, policy)

    def record_evaluation(self, role: str, label: EpisodeLabel, end: EpisodeEnd,
                          policy: str | None) -> dict | None:
        """Score an evaluation episode (none of its steps are stored); see evaluations.py."""
        return self.evaluations.record(role, label, end, policy, {
            'env_steps': self.env_steps, 'updates': self.updates})

    def store(self, role: str, item: AssemblerOutput):
        """Write one assembler output item of vehicle `role` into the buffer and the logs."""
        if isinstance(item, Transition) and role in self._broken_streams:
            self.unstored += 1  # its episode lost a step: no transition may link across
            return
        with self.buffer_lock:
            try:
                if isinstance(item, EpisodeStart):
                    self.buffer.start_episode(item.frame, item.vec, stream=role)
                    self._broken_streams.discard(role)
                    self.returns.start(role)
                elif isinstance(item, Transition):
                    index = self.buffer.add(item.action, item.reward, item.next_frame,
                                            item.next_vec, item.terminated, item.truncated,
                                            stream=role)
                    self.returns.add(index, item.reward, role)
                    self.env_steps += 1
            except ValueError as error:  # e.g. kinematics beyond float16: skip, go on
                self.buffer.abandon_episode(role)
                self._broken_streams.add(role)
                self.returns.start(role)  # the broken episode's returns would be wrong
                self.unstored += 1
                kind = 'start' if isinstance(item, EpisodeStart) else 'transition'
                self.log_throttled('error', f'store_{role}', f'{role}: {kind} not stored '
                                   f'({error}); its episode continues from the next start')
                return
            if isinstance(item, Transition) and self.env_steps % 50 == 0:
                self.run.scalars('reward_terms', item.terms, self.env_steps)
        if isinstance(item, EpisodeEnd):
            with self.buffer_lock:
                self.returns.finish(role)
            self.episodes += 1
            self.recent_returns = (self.recent_returns + [item.episode_return])[-20:]
            record = {'episode': self.episodes, 'vehicle': role,
                      'return': item.episode_return, 'length': item.steps,
                      'reason': item.reason, 'route_completion': item.route_completion,
                      'collisions': item.collisions, 'lane_invasions': item.lane_invasions,
                      'env_steps': self.env_steps,
                      'updates': self.updates, 'stamp': time.time()}
            self.run.log_episode(record, self.env_steps)
            self.log.info(f'{role}: episode {self.episodes} ended ({item.reason}): '
                          f'return {item.episode_return:.1f}, {item.steps} steps')

    def due(self) -> str | None:
        """Return the update the schedule allows now: 'bc', 'td3', or None (wait for data)."""
        config = self.config
        if (self.env_steps < config.learning_starts
                or self.buffer.size <= config.td3.batch_size):
            return None
        # Pretraining comes before TD3 only: a resumed TD3 run is never cloned again.
        if self.agent.total_updates == 0 and self.bc_updates < config.bc_pretrain_updates:
            return 'bc'
        if self.agent.total_updates < self.env_steps * config.updates_per_step:
            return 'td3'
        return None

    def sample(self, with_returns: bool = False) -> tuple[Batch, np.ndarray | None]:
        """Sample a batch under the buffer lock; with `with_returns`, its Monte Carlo returns."""
        with self.buffer_lock:
            batch = self.buffer.sample(self.config.td3.batch_size, self.rng)
            returns = self.returns.lookup(batch.indices) if with_returns else None
        return batch, returns

    def labels(self, batch: Batch) -> np.ndarray:
        """Return the route expert's action for each sampled transition's stored kinematics."""
        return expert_actions(batch.obs_vec, self.config.spec.features, self.config.expert)

    def bc_loss(self, limit: int = 4096, chunk: int = 256) -> float:
        """Return the actor's mean BC loss over (up to `limit` of) the stored transitions.

        On a fixed set rather than a batch, so two values compare (NaN with nothing stored).
        """
        with self.buffer_lock:
            indices = np.arange(*self.buffer.window)
            indices = indices[self.buffer.sampleable(indices)][-limit:]
            batches = [self.buffer.get(indices[i:i + chunk])
                       for i in range(0, len(indices), chunk)]
        total = 0.0
        agent = self.agent
        for batch in batches:
            b = agent.prepare(batch)
            with torch.no_grad():
                action = agent.actor(torch.cat([agent.actor_cnn(b.obs), b.obs_vec], dim=1))
            labels = torch.from_numpy(self.labels(batch)).to(action.device, torch.float32)
            total += float((action.float() - labels).square().sum())
        count = sum(len(batch.rewards) for batch in batches) * self.config.spec.network.action_dim
        return total / count if count else float('nan')

    def bc_step(self) -> dict[str, float]:
        """Run one BC pretraining step of the actor; sync the targets after the last one."""
        batch, _ = self.sample()
        if self.bc_updates == 0:
            self.log.info(f'BC pretraining: {self.config.bc_pretrain_updates} actor updates '
                          "towards the route expert's actions")
        metrics = metrics_to_floats(self.agent.bc_update(batch, self.labels(batch)))
        self.bc_updates += 1
        self._bc_losses = (self._bc_losses or [metrics['bc_mse']])[:1] + [metrics['bc_mse']]
        if self.bc_updates == self.config.bc_pretrain_updates:
            self.agent.sync_targets()  # TD3 bootstraps from the cloned actor
            first, last = self._bc_losses[0], self._bc_losses[-1]
            self.log.info(f'BC pretraining done: {self.bc_updates} updates, BC loss '
                          f'{first:.4f} -> {last:.4f}')
        self._after_update(batch, metrics, 'pretrain')
        return metrics

    def _frozen_policy(self, state: dict[str, torch.Tensor]) -> ActorPolicy:
        """Return an ActorPolicy with `state`'s weights on the agent's device, frozen."""
        policy = ActorPolicy(self.config.spec.network)
        policy.load_state_dict(state)
        return policy.to(self.agent.device).eval().requires_grad_(False)

    def td3_labels(self, batch: Batch, prepared: DeviceBatch) -> torch.Tensor | np.ndarray:
        """Return the TD3+BC term's labels for a sampled batch (`bc_labels`)."""
        if self.config.bc_labels == 'expert':
            return self.labels(batch)
        if self.start_policy is None:  # TD3's first update: the policy it starts from
            self.start_policy = self._frozen_policy(self.agent.policy_state())
        with torch.no_grad():
            return self.start_policy(prepared.obs, prepared.obs_vec)

    def td3_step(self) -> dict[str, torch.Tensor]:
        """Run one TD3 (or TD3+BC) update (Monte Carlo targets in the critic warm-up)."""
        config = self.config
        monte_carlo = self.agent.total_updates < config.td3.critic_warmup_updates
        start = time.perf_counter()
        batch, returns = self.sample(with_returns=monte_carlo)
        prepared = self.agent.prepare(batch)
        labels = self.td3_labels(batch, prepared) if config.td3.bc_weight > 0.0 else None
        sample_ms = (time.perf_counter() - start) * 1e3
        metrics = self.agent.update(prepared, labels, returns)
        self._after_update(batch, metrics, 'train', {'sample_ms': sample_ms})
        return metrics

    def maybe_update(self) -> str | None:
        """Run the update the schedule allows now; return 'bc', 'td3', 'failed' or None."""
        kind = self.due()
        if kind is None:
            return None
        try:
            if kind == 'bc':
                self.bc_step()
            else:
                self.td3_step()
        except Exception as error:  # keep experience collection alive; say what failed
            self.log.error(f'TD3 update failed: {error!r}')
            return 'failed'
        return kind

    def run_updates(self, stop: threading.Event):
        """Update whenever the schedule allows until `stop` is set (a worker thread's loop)."""
        while not stop.is_set():
            kind = self.maybe_update()
            if kind is None:
                stop.wait(0.01)
            elif kind == 'failed':
                stop.wait(1.0)

    def _after_update(self, batch: Batch, metrics: dict, section: str,
                      extra: dict | None = None):
        """Log, check health and save on the cadence of `updates`."""
        config = self.config
        self.updates_since_log += 1
        updates = self.updates
        if self.tb is not None and updates % 100 == 0:  # float(): a host sync per value
            self.run.scalars(section, {**metrics_to_floats(metrics), **(extra or {})}, updates)
        if updates % config.health_every == 0:
            health = self.agent.activation_health(batch)
            self.run.scalars('activation_health', health, updates)
            dead = max(v for k, v in health.items() if 'dead_unit' in k)
            self.log.info(
                f'activation health at {updates} updates: max dead unit fraction '
                f'{dead:.3f}, saturated actor outputs '
                f'{health["actor.saturated_fraction"]:.3f} (mean |pre-tanh| '
                f'{health["actor.pretanh_abs_mean"]:.2f})')
        if updates % config.checkpoint_every == 0:
            self.save_policy()
            self.log.info(f'checkpoint: policy after {updates} updates')
        if updates % config.state_every == 0:
            self.save_state()

    def take_update_count(self) -> int:
        """Return the updates done since the last call (for an updates/s figure)."""
        count, self.updates_since_log = self.updates_since_log, 0
        return count

    def close(self, save: bool = True):
        """Save the policy (if trained) and the state unless not `save`; close files and logs."""
        if save:
            if self.updates > 0:
                self.save_policy()
            self.save_state()
        with self.buffer_lock:
            self.buffer.close()
        self.run.close()
