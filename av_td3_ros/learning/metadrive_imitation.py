"""Learn a camera policy in MetaDrive from the privileged expert: BC and DAgger (no ROS).

The stand-in's recipe (`imitation.py`) in a first-person world with lanes and traffic:

1. Collect: the yielding-IDM expert (`sim/metadrive_expert.py`, inside the worker) drives
   with AR(1) action noise; every visited state is stored with the expert's *clean* label
   for it, as the worker computes one for every state, whoever drives.
2. Behaviour cloning on those frames.
3. DAgger rounds: per step the expert drives with probability beta, else the student; the
   expert labels every state and training continues on all data.
4. Validation on held-out scenario seeds; the best policy is kept. Its score is arrivals
   first, then the mean route completion: MetaDrive's reward is not what a driver is for.

The actor is the camera profile (speed and camera only); the kinematic vector is still stored
whole, as the driver builds it from the route, so any profile can train on the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import AR1Noise
from av_td3_ros.learning.imitation import ImitationConfig, ImitationTrainer
from av_td3_ros.policy.control import ControlCommand, action_to_control, control_to_action
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.policy.preprocessing import gray_from_pixels, image_pixels
from av_td3_ros.sim import metadrive_expert
from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveConfig
from av_td3_ros.sim.metadrive_evaluation import evaluate, image_of, policy_driver
from av_td3_ros.sim.metadrive_results import summary_line


@dataclass(frozen=True)
class MetaDriveImitationConfig(ImitationConfig):
    """Every setting of the MetaDrive recipe (defaults: the shipped MetaDrive camera policy)."""

    camera_width: int = 84
    """Camera size the student is trained (and should be driven) at."""
    camera_height: int = 84
    traffic_density: float = 0.1
    map: str = '3'
    """MetaDrive map: a number of blocks or a block string."""
    max_episode_steps: int = 1000
    expert_frames: int = 20000
    noise_max: float = 0.15
    bc_updates: int = 5000
    dagger_betas: tuple[float, ...] = (0.0,)
    dagger_frames: int = 10000
    dagger_updates: int = 5000
    validate_every: int = 2500
    validation_seeds: tuple[int, ...] = (44000, 44001, 44002, 44003)
    """Held-out scenarios for keep-the-best; never collected on, never evaluation targets."""
    collect_seed_start: int = 40000
    dagger_seed_start: int = 41000


def label_action(state) -> np.ndarray:
    """Return the expert's label of `state` as the actor's (steer, accel) action."""
    return np.array(control_to_action(ControlCommand(*state.expert)), np.float32)


def expert_settings() -> dict:
    """Return the expert's constants, for the checkpoint metadata."""
    names = ('HORIZON', 'STEP', 'GAP', 'HARD_BRAKE_WITHIN', 'SCAN_RADIUS')
    return {name.lower(): getattr(metadrive_expert, name) for name in names}


class MetaDriveImitationTrainer(ImitationTrainer):
    """Run a MetaDriveImitationConfig: `ImitationTrainer`'s phases on a MetaDrive worker."""

    def _open_world(self):
        """Start the MetaDrive client whose worker labels every state with the expert."""
        config = self.config
        self.client = MetaDriveClient(MetaDriveConfig(
            image_width=config.camera_width, image_height=config.camera_height,
            traffic_density=config.traffic_density, map=config.map,
            max_episode_steps=config.max_episode_steps, expert=True,
            # MetaDrive serves seeds start_seed .. start_seed + scenarios - 1 only.
            start_seed=config.collect_seed_start,
            scenarios=max(config.validation_seeds) - config.collect_seed_start + 1))
        self.pipeline = DrivingPipeline(self.spec)

    def close(self):
        """Stop the MetaDrive worker."""
        self.client.close()

    def collect_episode(self, seed: int, max_frames: int, noise: AR1Noise | None,
                        student: PolicyRunner | None, beta: float) -> dict:
        """Drive scenario `seed`, storing every state with the clean expert label."""
        pipeline = self.pipeline
        pipeline.set_runner(student)
        pipeline.reset_episode()
        state = self.client.reset(seed)
        route = state.route[:, :2] if state.route is not None else np.zeros((0, 2))
        self.dataset.start_episode()
        stored = 0
        while not state.done and stored < max_frames and state.expert is not None:
            image = image_of(state)
            result = pipeline.step(image, Pose2D(state.x, state.y, state.yaw), state.speed,
                                   route)
            label = label_action(state)
            gray = gray_from_pixels(image_pixels(image), image.encoding,
                                    self.spec.preprocessing.image_size)
            self.dataset.add(gray, pipeline.kinematics, label, False)
            stored += 1
            action = label
            if student is not None:
                if self.rng.random() >= beta and result.action is not None:
                    action = result.action
            elif noise is not None:
                action = np.clip(label + noise(), -1.0, 1.0)
            command = action_to_control(float(action[0]), float(action[1]))
            state = self.client.step(command.steer, command.throttle, command.brake)
        reason = state.end[1] if state.end is not None else 'cut'
        return {'seed': seed, 'frames': stored, 'reason': reason}

    def collect(self, frames: int, seed_start: int, student: bool, beta: float,
                phase: str) -> dict:
        """Collect `frames` steps on scenarios seed_start, +1, ...; return the phase summary."""
        config = self.config
        runner = None
        if student:
            self._eval_policy.load_state_dict(self.policy.state_dict())
            runner = PolicyRunner(self._eval_policy, torch.device('cpu'))
        episodes, seed, start_size = [], seed_start, self.dataset.size
        while self.dataset.size - start_size < frames:
            noise = None if student else AR1Noise(
                self.rng, self.rng.uniform(0.0, config.noise_max), config.noise_autocorrelation)
            episodes.append(self.collect_episode(
                seed, frames - (self.dataset.size - start_size), noise, runner, beta))
            seed += 1
        reasons = {}
        for episode in episodes:
            reasons[episode['reason']] = reasons.get(episode['reason'], 0) + 1
        summary = {'phase': phase, 'frames': self.dataset.size - start_size,
                   'episodes': len(episodes), 'seeds': [seed_start, seed - 1],
                   'beta': beta if student else 1.0, 'ends': reasons}
        self.log(f'[imitation] {phase}: {json.dumps(summary)}')
        self.report.phases.append(summary)
        return summary

    def _validation_scores(self, policy: ActorPolicy) -> tuple[float, dict]:
        """Drive the validation scenarios: arrivals first, then mean route completion."""
        pipeline = DrivingPipeline(self.spec, PolicyRunner(policy, torch.device('cpu')))
        results = evaluate(self.client, list(self.config.validation_seeds),
                           policy_driver(pipeline))
        arrivals = sum(r.arrived for r in results)
        completion = float(np.mean([r.route_completion for r in results]))
        return arrivals * 100.0 + completion, {
            'arrivals': arrivals, 'route_completion': round(completion, 1),
            'outcomes': [r.outcome for r in results], 'summary': summary_line(results)}

    def expert_metadata(self) -> str:
        """Return the MetaDrive expert's constants as JSON."""
        return json.dumps({'expert': 'metadrive_expert.YieldingIDM', **expert_settings()},
                          sort_keys=True)
