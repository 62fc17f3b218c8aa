"""Fine-tune a driving policy with TD3 (optionally TD3+BC) on the stand-in, in one process.

The ROS training loop with the graph taken out, built from the same parts: `SimEnv` plays
the CARLA bridge; the driver's `DrivingPipeline` acts (the policy plus Gaussian exploration
noise, as `mode:=explore`); the trainer's `TransitionAssembler` and `Learner` turn the
messages into transitions and run each TD3 update at a fixed update-to-data ratio; the
acting policy is refreshed every `sync_every` updates, as the driver hot-reloads. This
module adds only the simulator, the schedule and the evaluations.

A young critic is myopic (TD targets carry value back about one step per target-network
lag), and an actor that follows it early learns to floor the throttle. So the critic first
learns the starting policy's values (`critic_warmup_updates`) from its own noisy actions
(`prefill_steps`), on the finished episodes' Monte Carlo returns; then TD3 (or TD3+BC) runs
as usual, evaluated on held-out seeds every `eval_every_updates`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.learning.learner import BC_LABELS, Learner, LearnerConfig
from av_td3_ros.learning.mc_returns import MonteCarloReturns
from av_td3_ros.learning.replay_buffer import ReplayBuffer
from av_td3_ros.learning.td3 import TD3, TD3Config, metrics_to_floats
from av_td3_ros.policy.checkpoint import PolicySpec, load_policy, save_policy_state
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.policy.preprocessing import gray_from_pixels, image_pixels
from av_td3_ros.sim.evaluation import evaluate_policy, image_of, mean_return, pose_of, summary_line
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig
from av_td3_ros.task.reward import STAND_IN_GAMMA, RewardConfig
from av_td3_ros.task.transitions import (
    AssemblerOutput,
    EpisodeConfig,
    EpisodeEnd,
    Transition,
    TransitionAssembler,
)
from av_td3_ros.validation import check_choice

STEP_NS = 50_000_000
"""Stamp increment per simulator step (the bridge's 20 Hz)."""
VEHICLE = 'ego'
"""The one vehicle's stream name in the learner."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults: the stand-in profile of trainer_sim.yaml)."""

    td3: TD3Config = TD3Config(batch_size=64, precision='auto', critic_warmup_updates=5000,
                               actor_pretanh_penalty=0.01, gamma=STAND_IN_GAMMA)
    """TD3 settings; bc_weight > 0 makes it TD3+BC with the route expert's labels."""
    bc_labels: str = 'expert'
    """See `LearnerConfig.bc_labels`."""
    cpu_minutes: float = 30.0
    """Budget: process CPU time spent acting and learning (evaluations not counted)."""
    prefill_steps: int = 2000
    """Environment steps of the starting policy (with noise) before the first update."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise added to the policy's actions while collecting."""
    updates_per_step: float = 0.5
    """Update-to-data ratio after the prefill."""
    sync_every: int = 250
    """Updates between refreshes of the acting policy (the driver's checkpoint reloads)."""
    eval_every_updates: int = 5000
    """Updates between evaluations on `eval_seeds` (and once before the first update)."""
    eval_seeds: tuple[int, ...] = (600, 601, 602, 603, 604)
    """Held-out tracks for keep-the-best (no recipe or test uses them for training)."""
    train_seed_start: int = 5000
    """Tracks for collection: train_seed_start, +1, ... one per episode."""
    buffer_capacity: int = 60000
    """Replay capacity (transitions)."""
    episode: EpisodeConfig = EpisodeConfig(max_steps=1200, max_lateral_deviation=6.5)
    """Episode rules, as trainer_sim.yaml sets them for CarRacing's 13.3 m road."""
    reward: RewardConfig = RewardConfig(lateral_tolerance=6.5)
    """Reward settings, as the trainer derives them from trainer_sim.yaml."""
    sim: SimEnvConfig = SimEnvConfig()
    """Simulator settings for collection and evaluation (the sim_bridge defaults)."""
    torch_threads: int = 1
    """Intra-op threads (one: the figures are CPU-minutes of one core)."""
    seed: int = 0
    """Seed of sampling, exploration and target noise."""

    def __post_init__(self):
        """Refuse unknown choices by name, as `LearnerConfig` does."""
        check_choice('bc_labels', self.bc_labels, BC_LABELS)

    def to_dict(self) -> dict:
        """Return the config as plain values (JSON, for reports and checkpoint metadata)."""
        return asdict(self)

    def learner_config(self, run_dir: Path, start: str | Path,
                       spec: PolicySpec) -> LearnerConfig:
        """Return the trainer's learner settings of this run (no checkpoints, no logs)."""
        return LearnerConfig(
            run_dir=run_dir, spec=spec, td3=replace(self.td3, seed=self.seed),
            seed=self.seed, resume=False, buffer_capacity=self.buffer_capacity,
            buffer_kinematics_dtype='float32', learning_starts=self.prefill_steps,
            updates_per_step=self.updates_per_step, checkpoint_every=_NEVER,
            keep_checkpoints=1, state_every=_NEVER, health_every=_NEVER, tensorboard=False,
            initial_policy=str(start), bc_labels=self.bc_labels)


_NEVER = 2 ** 62
"""A cadence (in updates) never reached: the Finetuner keeps its best policy itself."""


@dataclass
class FinetuneReport:
    """What happened during a run."""

    start_return: float = float('nan')
    best_return: float = float('nan')
    best_updates: int = 0
    evaluations: list[dict] = field(default_factory=list)
    episodes: list[dict] = field(default_factory=list)
    env_steps: int = 0
    updates: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class Finetuner:
    """Run TD3 (or TD3+BC) from a cloned policy on SimEnv; keep the best evaluated policy."""

    def __init__(self, start: str | Path, run_dir: str | Path,
                 config: FinetuneConfig = FinetuneConfig(), log=print):
        """Load the starting policy, build the learner, buffer, assembler and simulator."""
        self.config = config
        self.log = log
        torch.set_num_threads(config.torch_threads)
        policy, metadata = load_policy(start)
        self.spec = PolicySpec.from_metadata(metadata)
        self.run_dir = Path(run_dir)
        self.learner = Learner(config.learner_config(self.run_dir, start, self.spec))
        self.acting = ActorPolicy(self.spec.network)
        self.acting.load_state_dict(policy.state_dict())
        self.pipeline = DrivingPipeline(
            self.spec, PolicyRunner(self.acting, torch.device('cpu')),
            ExplorationConfig(mode='explore', learning_starts=0,
                              noise_start=config.exploration_noise,
                              noise_end=config.exploration_noise, noise_decay_steps=0,
                              seed=config.seed))
        self.assembler = TransitionAssembler(self.spec.features, config.reward, config.episode)
        self.env = SimEnv(config.sim)
        # Diagnostics draw their own batches: evaluating must not change what training samples.
        self.diagnostics_rng = np.random.default_rng(config.seed + 1)
        self.report = FinetuneReport()
        self.best_state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        self._stamp = 0
        self._train_seed = config.train_seed_start
        self._episode_open = False
        self._cpu = 0.0  # CPU seconds of acting and learning (evaluations excluded)

    @property
    def agent(self) -> TD3:
        """Return the learner's TD3 agent."""
        return self.learner.agent

    @property
    def buffer(self) -> ReplayBuffer:
        """Return the learner's replay buffer."""
        return self.learner.buffer

    @property
    def returns(self) -> MonteCarloReturns:
        """Return the learner's Monte Carlo returns of the stored episodes."""
        return self.learner.returns

    @property
    def rng(self) -> np.random.Generator:
        """Return the learner's batch sampler."""
        return self.learner.rng

    def _begin_episode(self):
        self.state = self.env.reset(seed=self._train_seed)
        self._train_seed += 1
        self.pipeline.reset_episode()
        self.assembler.on_route(self.env.waypoints)
        self._stamp += STEP_NS
        self.assembler.on_episode_start(self._stamp)
        self._episode_open = True

    def act_once(self):
        """Play one simulator step: observe, act (with noise), feed the assembler, store."""
        if not self._episode_open:
            self._begin_episode()
        state = self.state
        pose = pose_of(state)
        self.assembler.on_odometry(self._stamp, pose, state.speed, state.yaw_rate)
        image = image_of(state)
        result = self.pipeline.step(image, pose, state.speed, self.env.waypoints)
        gray = gray_from_pixels(image_pixels(image), image.encoding,
                                self.spec.preprocessing.image_size)
        self.assembler.on_frame(self._stamp, gray)
        action = result.action if result.action is not None else np.array([0.0, -1.0])
        self.assembler.on_control(self._stamp, np.asarray(action, np.float32))
        if state.done:
            self.assembler.on_episode_end('terminated' if state.terminated else 'truncated',
                                          state.reason)
        else:
            command = result.command
            self.state = self.env.step(command.steer, command.throttle, command.brake)
        self._stamp += STEP_NS
        for item in self.assembler.pop_output():
            self._store(item)

    def _store(self, item: AssemblerOutput):
        self.learner.store(VEHICLE, item)
        if isinstance(item, Transition):
            self.report.env_steps += 1
        elif isinstance(item, EpisodeEnd):
            record = {'return': round(item.episode_return, 1), 'sim_return':
                      round(float(self.state.episode_return), 1), 'length': item.steps,
                      'reason': item.reason, 'updates': self.agent.total_updates}
            self.report.episodes.append(record)
            self._episode_open = False

    def learn_once(self) -> dict[str, torch.Tensor]:
        """Run one of the trainer's TD3 updates; refresh the acting policy on its cadence."""
        metrics = self.learner.td3_step()
        if self.agent.total_updates % self.config.sync_every == 0:
            self.acting.load_state_dict(self.agent.policy_state())
        return metrics

    def value_diagnostics(self, size: int = 512) -> dict[str, float]:
        """Return what the critic believes about stored states, on the road and near its edge.

        Near the edge: farther than 4.5 m from the centre line. `dq_dthrottle_pos`: fraction
        of states where dQ1/dthrottle at the actor's action is positive; `q_*`: Q1 of the
        stored action; `reward_*`: stored rewards.
        """
        if self.buffer.size <= self.config.td3.batch_size:
            return {}
        batch = self.buffer.sample(size, self.diagnostics_rng)
        agent = self.agent
        b = agent.prepare(batch)
        lateral = np.abs(batch.obs_vec[:, 1]) * self.spec.features.lateral_scale
        near = lateral > 4.5
        with torch.no_grad():
            state = torch.cat([agent.critic_cnn(b.obs), b.obs_vec], dim=1)
            q_data = agent.critic.Q1(state, b.actions).squeeze(1).numpy()
            action = agent.actor(torch.cat([agent.actor_cnn(b.obs), b.obs_vec], dim=1))
        action = action.clone().requires_grad_(True)
        agent.critic.Q1(state, action).sum().backward()
        agent.critic.zero_grad(set_to_none=True)
        throttle_grad = action.grad[:, 1].numpy()
        values = {'dq_dthrottle_pos': float(np.mean(throttle_grad > 0)),
                  'actor_throttle': float(action[:, 1].detach().mean()),
                  'q_on_road': float(q_data[~near].mean()) if (~near).any() else float('nan'),
                  'q_near_edge': float(q_data[near].mean()) if near.any() else float('nan'),
                  'reward_on_road': float(batch.rewards[~near].mean()) if (~near).any()
                  else float('nan'),
                  'reward_near_edge': float(batch.rewards[near].mean()) if near.any()
                  else float('nan'),
                  'near_edge_fraction': float(near.mean()),
                  'terminal_near_edge': float(batch.terminated[near].mean()) if near.any()
                  else float('nan')}
        return {k: round(v, 3) for k, v in values.items()}

    def evaluate(self) -> float:
        """Drive the held-out seeds with the current policy; keep it if it is the best."""
        policy = ActorPolicy(self.spec.network)
        state = self.agent.policy_state()
        policy.load_state_dict(state)
        results = evaluate_policy(policy, self.spec, list(self.config.eval_seeds),
                                  self.config.sim)
        value = mean_return(results)
        record = {'updates': self.agent.total_updates, 'env_steps': self.report.env_steps,
                  'cpu_minutes': round(self._cpu / 60.0, 2), 'mean_return': round(value, 1),
                  'returns': [round(r.episode_return, 1) for r in results],
                  'laps': sum(r.lap_complete for r in results),
                  'critic': self.value_diagnostics()}
        self.report.evaluations.append(record)
        if not self.report.evaluations[:-1]:
            self.report.start_return = value
        if not value <= self.report.best_return:  # also true for the first (nan best)
            self.report.best_return = value
            self.report.best_updates = self.agent.total_updates
            self.best_state = state
        self.log(f'[finetune] eval {json.dumps(record)} ({summary_line(results)})')
        return value

    def run(self) -> FinetuneReport:
        """Prefill, then act and learn at the update-to-data ratio until the CPU budget."""
        config = self.config
        wall = time.monotonic()
        self.evaluate()
        budget = config.cpu_minutes * 60.0
        next_eval = config.eval_every_updates
        last_log = time.monotonic()
        while self._cpu < budget:
            start = time.process_time()
            self.act_once()
            steps = self.report.env_steps
            metrics = {}
            if steps >= config.prefill_steps:
                due = (steps - config.prefill_steps + 1) * config.updates_per_step
                while self.agent.total_updates < due:
                    metrics = self.learn_once()
            self._cpu += time.process_time() - start
            if self.agent.total_updates >= next_eval:
                next_eval += config.eval_every_updates
                self.evaluate()
            if time.monotonic() - last_log > 60.0 and metrics:
                last_log = time.monotonic()
                values = metrics_to_floats(metrics)
                recent = [e['sim_return'] for e in self.report.episodes[-5:]]
                self.log(f'[finetune] {steps} steps, {self.agent.total_updates} updates, '
                         f'{self._cpu / 60:.1f} CPU-min, recent sim returns {recent}, '
                         + ', '.join(f'{k} {v:.3g}' for k, v in sorted(values.items())))
        self.evaluate()
        self.report.updates = self.agent.total_updates
        self.report.cpu_seconds = self._cpu
        self.report.wall_seconds = time.monotonic() - wall
        return self.report

    def save(self, path: str | Path, half: bool = True, last: bool = False):
        """Write the best evaluated policy, or with `last` the current one (fp16 by default)."""
        state = self.agent.policy_state() if last else self.best_state
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_policy_state(path, state, self.spec, {
            'finetune_config': json.dumps(self.config.to_dict(), sort_keys=True, default=str),
            'finetune_report': json.dumps(asdict(self.report), sort_keys=True),
            'step': str(self.agent.total_updates if last else self.report.best_updates)})

    def close(self):
        """Close the simulator and the learner (its buffer stays in run_dir; no state file)."""
        self.env.close()
        self.learner.close(save=False)
