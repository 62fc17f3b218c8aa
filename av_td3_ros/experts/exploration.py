"""Act without a policy's own judgement: driver modes, exploration schedules and noise.

`ExplorationConfig` says who drives each frame (the policy, uniform random actions, the
route expert, or DAgger's mix) and how much Gaussian noise explore mode adds; `AR1Noise`
is the temporally correlated noise imitation uses when it collects the expert's data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from av_td3_ros.validation import check_at_least, check_choice, check_range

MODES = ('eval', 'explore', 'expert', 'dagger')


class AR1Noise:
    """Temporally correlated Gaussian noise: n_t = c n_(t-1) + sqrt(1 - c^2) sigma e_t.

    Its stationary std is sigma whatever c. With c = 0 it is white noise, the very same
    draws as `rng.normal(0, sigma)`; with c near 1 a deviation lasts about 1 / (1 - c)
    steps, so it moves the car as a change of policy would, where white noise at 20 Hz
    averages out within a few frames.
    """

    def __init__(self, rng: np.random.Generator, sigma: float, correlation: float, dim: int = 2):
        """Start at zero; `rng` draws the innovations."""
        check_range('correlation', correlation, 0.0, 1.0, high_open=True)
        self.rng = rng
        self.sigma = sigma
        self.correlation = correlation
        self.value = np.zeros(dim)

    def reset(self):
        """Start again from zero (a new episode)."""
        self.value = np.zeros_like(self.value)

    def __call__(self, sigma: float | None = None) -> np.ndarray:
        """Return the next sample (with `sigma`, the innovation's std from now on)."""
        if sigma is not None:
            self.sigma = sigma
        innovation = self.rng.normal(0.0, self.sigma, self.value.shape)
        self.value = (self.correlation * self.value
                      + np.sqrt(1.0 - self.correlation ** 2) * innovation)
        return self.value


@dataclass(frozen=True)
class ExplorationConfig:
    """How a driver in explore mode perturbs the policy's actions."""

    mode: str = 'eval'
    """eval: the policy's action as is; explore: uniform random, then Gaussian noise;
    expert: the route expert drives (no policy needed); dagger: per frame the expert with
    probability beta (see beta_*), else the policy."""
    learning_starts: int = 10000
    """Explore mode: uniform random actions for the first learning_starts frames (the
    trainer's parameter of the same name and value waits as many transitions before its first
    update, so the policy acts from the first frame after learning has started)."""
    noise_start: float = 0.3
    """Gaussian action noise std at the end of the random phase."""
    noise_end: float = 0.1
    """Noise std after the decay."""
    noise_decay_steps: int = 20000
    """Steps over which the std decays linearly from noise_start to noise_end."""
    seed: int = 0
    """Seed of the exploration noise."""
    beta_start: float = 1.0
    """DAgger: probability that the expert drives a frame, at the first frame..."""
    beta_end: float = 0.0
    """...and after beta_decay_steps frames (linear in between)."""
    beta_decay_steps: int = 20000
    """DAgger: frames over which beta decays."""

    def beta(self, step: int) -> float:
        """Return the DAgger probability that the expert drives frame `step` (1-based)."""
        if self.beta_decay_steps == 0:
            return self.beta_end
        progress = min(max(step - 1, 0) / self.beta_decay_steps, 1.0)
        return self.beta_start + (self.beta_end - self.beta_start) * progress

    def __post_init__(self):
        """Validate the mode and the schedule."""
        check_choice('mode', self.mode, MODES)
        check_at_least(self, 0, 'learning_starts', 'noise_decay_steps', 'beta_decay_steps')
        check_range('beta_start', self.beta_start, 0.0, 1.0)
        check_range('beta_end', self.beta_end, 0.0, 1.0)

    def is_random(self, step: int) -> bool:
        """Return True if frame `step` (1-based: the first frame is 1) gets a random action.

        The one place of the random phase's boundary: frames 1..learning_starts are random.
        """
        return self.mode == 'explore' and step <= self.learning_starts

    def noise_std(self, step: int) -> float:
        """Return the Gaussian noise std at driver step `step` (after the random phase)."""
        if self.noise_decay_steps == 0:
            return self.noise_end
        progress = min(max(step - self.learning_starts, 0) / self.noise_decay_steps, 1.0)
        return self.noise_start + (self.noise_end - self.noise_start) * progress
