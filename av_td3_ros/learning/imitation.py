"""Learn a driving policy from the route expert: noisy expert data, BC and DAgger (no ROS).

The recipe (`ImitationConfig` holds every number):

1. Collect: the expert drives the stand-in with AR(1) action noise, and every visited state
   is labelled with the *clean* expert action, so the data shows how to recover.
2. Behaviour cloning: `ActorPolicy` regresses the labels (MSE on the action).
3. DAgger rounds: per step the expert drives with probability beta, else the student; the
   expert labels every visited state and training continues on all data (the student's own
   mistakes are what plain BC never sees).
4. Validation on held-out seeds; the best policy is kept (returns swing between checkpoints).

Episodes are cut after `max_off_road_steps` steps off the road (the grass teaches nothing).
Frames are kept once as uint8; stacks are assembled per batch from indices.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import AR1Noise
from av_td3_ros.experts.route_expert import ExpertConfig, RouteExpert
from av_td3_ros.learning.td3 import resolve_precision
from av_td3_ros.policy.checkpoint import PolicySpec, save_policy_state
from av_td3_ros.policy.control import action_to_control
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import (
    PreprocessConfig,
    gray_from_pixels,
    image_pixels,
    scale_frames,
)
from av_td3_ros.sim.evaluation import evaluate_policy, image_of, mean_return, pose_of
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig


@dataclass(frozen=True)
class ImitationConfig:
    """Every setting of the imitation recipe (defaults: the shipped camera policy)."""

    kinematic_inputs: str = 'speed'
    """What the actor sees of the kinematic vector: speed (camera profile) or all (route)."""
    feature_norm: str = 'layernorm_tanh'
    """CNN feature normalisation (sim_drive.launch.xml's driver default)."""
    expert_frames: int = 40000
    """Frames of noisy expert driving collected first."""
    noise_max: float = 0.15
    """Each expert episode draws its action-noise std uniformly from [0, noise_max]."""
    noise_autocorrelation: float = 0.9
    """AR(1) coefficient of the action noise per step (correlated, like a drifting driver)."""
    max_off_road_steps: int = 60
    """Cut a collection episode after this many consecutive steps fully off the road."""
    bc_updates: int = 6000
    """Updates of behaviour cloning on the expert data."""
    dagger_betas: tuple[float, ...] = (0.0,)
    """One DAgger round per entry: the probability that the expert (not the student) drives
    each step. 0.0: the student drives and the expert only labels."""
    dagger_frames: int = 12000
    """Frames collected per DAgger round."""
    dagger_updates: int = 6000
    """Updates after each DAgger round, on all data so far."""
    batch_size: int = 64
    learning_rate: float = 3e-4
    validate_every: int = 1500
    """In the last phase, validate every this many updates (0: only at phase ends)."""
    validation_seeds: tuple[int, ...] = (500, 501, 502, 503)
    """Held-out tracks for keep-the-best; never used for collection or evaluation targets."""
    collect_seed_start: int = 1000
    """Expert collection drives tracks collect_seed_start, +1, ...;"""
    dagger_seed_start: int = 2000
    """...DAgger round r drives tracks dagger_seed_start + 1000 * (r - 1), +1, ..."""
    seed: int = 0
    """Seed of the noise, the mixture, the network init and the batches."""
    log_every: int = 500
    """Print the loss every this many updates."""
    precision: str = 'fp32'
    """BC update precision: fp32 (the shipped model's), bf16 (autocast) or auto."""

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoint metadata and the model card)."""
        return asdict(self)


@dataclass
class TrainingReport:
    """What a training run did, for the checkpoint metadata and the model card."""

    phases: list[dict] = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    frames: int = 0
    cpu_seconds: float = 0.0
    """CPU time of the whole run (this process), validation included."""
    validation_cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class FrameDataset:
    """Grey uint8 frames with their full kinematic vectors and expert labels, one per step."""

    def __init__(self, capacity: int, preprocessing: PreprocessConfig, kinematic_dim: int):
        """Preallocate room for `capacity` steps."""
        size = preprocessing.image_size
        self.preprocessing = preprocessing
        self.frames = np.zeros((capacity, size, size), np.uint8)
        self.kinematics = np.zeros((capacity, kinematic_dim), np.float32)
        self.labels = np.zeros((capacity, 2), np.float32)
        self.episode_first = np.zeros(capacity, np.int64)
        self.off_road = np.zeros(capacity, bool)
        self.size = 0
        self._first = 0

    @property
    def capacity(self) -> int:
        """Return the number of steps the dataset can hold."""
        return len(self.frames)

    def start_episode(self):
        """Make the next step the first of an episode (its stack starts there)."""
        self._first = self.size

    def add(self, gray: np.ndarray, kinematics: np.ndarray, label: np.ndarray,
            off_road: bool):
        """Append one step; raise IndexError when full."""
        if self.size >= self.capacity:
            raise IndexError('dataset is full')
        i = self.size
        self.frames[i] = gray
        self.kinematics[i] = kinematics
        self.labels[i] = label
        self.episode_first[i] = self._first
        self.off_road[i] = off_road
        self.size += 1

    def stacks(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return the float32 frame stacks (B, F, S, S) the driver's `FrameStack` held."""
        count = self.preprocessing.frame_stack
        offsets = indices[:, None] + np.arange(1 - count, 1)[None, :]
        first = self.episode_first[indices][:, None]
        blank = offsets < first
        offsets = np.maximum(offsets, first)
        stacks = scale_frames(self.frames[offsets], self.preprocessing.scale, out=out)
        if self.preprocessing.stack_fill == 'zero':
            stacks[blank] = 0.0
        return stacks


def policy_spec(config: ImitationConfig) -> PolicySpec:
    """Return the PolicySpec the recipe trains under."""
    return PolicySpec(network=NetworkConfig(feature_norm=config.feature_norm,
                                            kinematic_inputs=config.kinematic_inputs))


def collect_episode(env: SimEnv, seed: int, dataset: FrameDataset, spec: PolicySpec,
                    expert: RouteExpert, max_frames: int, max_off_road_steps: int,
                    rng: np.random.Generator, noise: AR1Noise | None = None,
                    student: PolicyRunner | None = None, beta: float = 1.0) -> dict:
    """Drive one episode, storing every state with the clean expert label.

    The expert plus `noise` drives, or per step the expert with probability `beta`, else the
    `student`; stop at the end, `max_off_road_steps` off the road, or `max_frames`.
    """
    pipeline = DrivingPipeline(spec, student)
    state = env.reset(seed=seed)
    expert.reset()
    dataset.start_episode()
    stored = off_road_run = off_road_total = 0
    while not state.done and stored < max_frames and off_road_run < max_off_road_steps:
        image = image_of(state)
        label = expert.act(pose_of(state), state.speed, env.waypoints)
        gray = gray_from_pixels(image_pixels(image), 'bgra8', spec.preprocessing.image_size)
        dataset.add(gray, expert.kinematics, label, state.off_track)
        stored += 1
        action = label
        if student is not None:
            result = pipeline.step(image, pose_of(state), state.speed, env.waypoints)
            if rng.random() >= beta and result.action is not None:
                action = result.action
        elif noise is not None:
            action = np.clip(label + noise(), -1.0, 1.0)
        command = action_to_control(float(action[0]), float(action[1]))
        state = env.step(command.steer, command.throttle, command.brake)
        off_road_run = off_road_run + 1 if state.off_track else 0
        off_road_total += state.off_track
    return {'seed': seed, 'frames': stored, 'return': round(float(state.episode_return), 1),
            'off_road_steps': off_road_total, 'reason': state.reason or 'cut'}


def bc_step(policy: ActorPolicy, optimizer: torch.optim.Optimizer, frames: torch.Tensor,
            kinematics: torch.Tensor, labels: torch.Tensor, bf16: bool = False) -> float:
    """Run one behaviour-cloning step (MSE to `labels`) and return the loss.

    With `bf16`: bfloat16 autocast on channels_last frames; weights and loss stay float32.
    """
    if bf16:
        frames = frames.contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        actions = policy(frames, kinematics)
    loss = torch.mean((actions.float() - labels) ** 2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def use_fast_layout(policy: ActorPolicy):
    """Store the policy's CNN weights channels_last for bf16 `bc_step`s (values unchanged)."""
    policy.cnn.to(memory_format=torch.channels_last)


class ImitationTrainer:
    """Run the recipe of an ImitationConfig and keep the best validated policy."""

    def __init__(self, config: ImitationConfig, log=print):
        """Build the environment, the expert, the dataset and the student."""
        self.config = config
        self.log = log
        self.spec = policy_spec(config)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self._open_world()
        capacity = config.expert_frames + config.dagger_frames * len(config.dagger_betas)
        self.dataset = FrameDataset(capacity, self.spec.preprocessing,
                                    self.spec.network.kinematic_dim)
        self.policy = ActorPolicy(self.spec.network)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate)
        self._bf16 = resolve_precision(config.precision, torch.device('cpu')) == 'bf16'
        if self._bf16:
            use_fast_layout(self.policy)
        self.updates = 0
        self._cpu_start = time.process_time()
        self._validation_cpu = 0.0  # CPU spent validating: evaluation, not learning
        self.report = TrainingReport()
        self.best_state = None
        self.best_return = -np.inf
        self._eval_policy = ActorPolicy(self.spec.network)
        self._stack_buffer = np.zeros((config.batch_size, self.spec.preprocessing.frame_stack,
                                       self.spec.preprocessing.image_size,
                                       self.spec.preprocessing.image_size), np.float32)

    def _open_world(self):
        """Build the simulator and the expert the recipe collects with."""
        self.env = SimEnv(SimEnvConfig())
        self.expert = RouteExpert(self.spec.features, ExpertConfig())

    def close(self):
        """Release the simulator (the stand-in holds nothing outside this process)."""

    def collect(self, frames: int, seed_start: int, student: bool, beta: float,
                phase: str) -> dict:
        """Collect `frames` steps on tracks seed_start, +1, ...; return the phase summary."""
        config = self.config
        runner = None
        if student:
            self._eval_policy.load_state_dict(self.policy.state_dict())
            runner = PolicyRunner(self._eval_policy, torch.device('cpu'))
        episodes, seed, start_size = [], seed_start, self.dataset.size
        while self.dataset.size - start_size < frames:
            noise = AR1Noise(self.rng, self.rng.uniform(0.0, config.noise_max),
                             config.noise_autocorrelation) if not student else None
            episodes.append(collect_episode(
                self.env, seed, self.dataset, self.spec, self.expert,
                frames - (self.dataset.size - start_size), config.max_off_road_steps,
                self.rng, noise=noise, student=runner, beta=beta))
            seed += 1
        added = slice(start_size, self.dataset.size)
        summary = {'phase': phase, 'frames': self.dataset.size - start_size,
                   'episodes': len(episodes), 'seeds': [seed_start, seed - 1],
                   'beta': beta if student else 1.0,
                   'off_road_fraction': round(float(self.dataset.off_road[added].mean()), 4),
                   'mean_return': round(float(np.mean([e['return'] for e in episodes])), 1)}
        self.log(f'[imitation] {phase}: {json.dumps(summary)}')
        self.report.phases.append(summary)
        return summary

    def update(self) -> float:
        """Run one BC update on a uniform batch of all data; return the loss."""
        indices = self.rng.integers(0, self.dataset.size, self.config.batch_size)
        frames = torch.from_numpy(self.dataset.stacks(indices, out=self._stack_buffer))
        kinematics = torch.from_numpy(self.dataset.kinematics[indices])
        labels = torch.from_numpy(self.dataset.labels[indices])
        loss = bc_step(self.policy, self.optimizer, frames, kinematics, labels,
                       self._bf16)
        self.updates += 1
        return loss

    def train(self, updates: int, validate_every: int, phase: str):
        """Run `updates` BC updates, validating every `validate_every` and at the end."""
        losses = []
        for step in range(1, updates + 1):
            losses.append(self.update())
            if step % self.config.log_every == 0:
                self.log(f'[imitation] {phase}: update {self.updates}, loss '
                         f'{np.mean(losses[-self.config.log_every:]):.4f}')
            if (validate_every and step % validate_every == 0) or step == updates:
                self.validate(phase)

    def validate(self, phase: str) -> float:
        """Drive the validation seeds; keep the policy if it is the best so far."""
        started = time.process_time()
        self._eval_policy.load_state_dict(self.policy.state_dict())
        value, scores = self._validation_scores(copy.deepcopy(self._eval_policy))
        learning_cpu = started - self._cpu_start - self._validation_cpu
        self._validation_cpu += time.process_time() - started
        record = {'phase': phase, 'updates': self.updates, **scores,
                  'env_steps': self.dataset.size,
                  'learning_cpu_minutes': round(learning_cpu / 60.0, 2)}
        self.report.validations.append(record)
        if value > self.best_return:
            self.best_return = value
            # contiguous: plain layout for safetensors (the bf16 path keeps channels_last)
            self.best_state = {k: v.detach().contiguous().clone()
                               for k, v in self.policy.state_dict().items()}
            self.report.best = record
        self.log(f'[imitation] validation {json.dumps(record)}'
                 f'{" (best so far)" if self.report.best is record else ""}')
        return value

    def _validation_scores(self, policy: ActorPolicy) -> tuple[float, dict]:
        """Drive the validation seeds; return the value to maximise and what to record."""
        results = evaluate_policy(policy, self.spec, list(self.config.validation_seeds))
        value = mean_return(results)
        return value, {'mean_return': round(value, 1),
                       'returns': [round(r.episode_return, 1) for r in results]}

    def expert_metadata(self) -> str:
        """Return the expert's settings as JSON, for the checkpoint metadata."""
        return json.dumps(ExpertConfig().to_dict(), sort_keys=True)

    def run(self) -> TrainingReport:
        """Run the whole recipe; return the report (the best weights are in best_state)."""
        config = self.config
        wall, cpu = time.monotonic(), time.process_time()
        self._cpu_start, self._validation_cpu = cpu, 0.0
        self.collect(config.expert_frames, config.collect_seed_start, False, 1.0, 'expert data')
        last = len(config.dagger_betas) == 0
        self.train(config.bc_updates, config.validate_every if last else 0, 'bc')
        for round_index, beta in enumerate(config.dagger_betas, start=1):
            self.collect(config.dagger_frames,
                         config.dagger_seed_start + 1000 * (round_index - 1), True, beta,
                         f'dagger round {round_index}')
            last = round_index == len(config.dagger_betas)
            self.train(config.dagger_updates, config.validate_every if last else 0,
                       f'dagger {round_index}')
        self.report.frames = self.dataset.size
        self.report.cpu_seconds = time.process_time() - cpu
        self.report.validation_cpu_seconds = self._validation_cpu
        self.report.wall_seconds = time.monotonic() - wall
        return self.report

    def save(self, path, half: bool = True):
        """Write the best policy (fp16 storage by default; it loads as float32)."""
        state = self.best_state if self.best_state is not None else {
            k: v.detach().contiguous() for k, v in self.policy.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        extra = {'imitation_config': json.dumps(self.config.to_dict(), sort_keys=True),
                 'imitation_report': json.dumps(asdict(self.report), sort_keys=True),
                 'expert_config': self.expert_metadata(),
                 # the updates behind the weights written (the best), not the run's total
                 'step': str(self.report.best.get('updates', self.updates))}
        save_policy_state(path, state, self.spec, extra)
