"""TD3 learner for the camera driving policy (no ROS imports).

Twin Delayed DDPG (Fujimoto et al. 2018, arXiv:1802.09477): the actor and the twin critic
(`critic.py`) each own a NatureCNN, and every online network has a target copy. With
`bc_weight` > 0 the actor loss is TD3+BC's (Fujimoto & Gu 2021). `TD3.prepare` is the ONE
place where uint8 frames become floats. Every speed-up keeps the update mathematically
unchanged and says why next to its code. The saved state is `td3_state.py`.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from av_td3_ros.learning import td3_state
from av_td3_ros.learning.critic import TwinCritic
from av_td3_ros.learning.device_batch import DeviceBatch, to_device, to_device_batch
from av_td3_ros.learning.precision import PRECISIONS, autocast, resolve_precision
from av_td3_ros.policy.inference import resolve_device
from av_td3_ros.policy.networks import Actor, NatureCNN, NetworkConfig
from av_td3_ros.policy.preprocessing import SCALES
from av_td3_ros.validation import check_at_least, check_choice, check_range

OPTIMIZER_IMPLS = ('fused', 'foreach', 'for_loop')


@dataclass(frozen=True)
class TD3Config:
    """Hyperparameters of the TD3 learner (defaults: av_td3_system's training config)."""

    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate (SB3 meaning): target = (1 - tau) * target + tau * online per target update."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor CNN and actor MLP."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic CNN and both Q heads."""
    batch_size: int = 256
    """Transitions per gradient step (used by the trainer when sampling)."""
    policy_frequency: int = 2
    """Policy delay: one actor step and one target update every this many critic steps."""
    policy_noise: float = 0.2
    """Std of the Gaussian target policy smoothing noise, relative to max_action."""
    noise_clip: float = 0.5
    """Smoothing noise is clipped to +-noise_clip * max_action before adding it."""
    actor_grad_clip: float | None = 1.0
    """Max global grad norm of the actor (CNN + MLP); 0 or None disables clipping."""
    critic_grad_clip: float | None = 10.0
    """Max global grad norm of the critic (CNN + Q1 + Q2); 0 or None disables clipping."""
    actor_pretanh_penalty: float = 0.0
    """Weight of mean(pre-tanh logits ** 2) added to the actor loss (0: plain TD3). It keeps
    the logits out of tanh's flat tails, where the gradient vanishes and the actor stops
    learning."""
    target_encoders: bool = True
    """Keep target copies of both CNNs (textbook TD3); False: the targets use the online CNNs
    (as av_td3_system)."""
    frame_scale: str = 'zero_centered'
    """uint8 -> float mapping: zero_centered (x/255 - 0.5)/0.5 in [-1, 1]; unit x/255."""
    device: str = 'auto'
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    channels_last: bool = True
    """Run the CNNs in channels_last (NHWC) layout: same maths, faster on CPU (oneDNN)."""
    optimizer_impl: str = 'fused'
    """Adam implementation: fused, foreach or for_loop (same update rule)."""
    seed: int | None = None
    """Seed for network initialisation and the target smoothing noise; None: nondeterministic."""
    bc_weight: float = 0.0
    """TD3+BC's weight w: the actor loss is -alpha * mean Q(s, pi(s)) / mean|Q| + w * mean
    (pi(s) - a*)^2, a* the labels passed to `update`. 0: plain TD3 (no labels needed)."""
    bc_alpha: float = 2.5
    """TD3+BC's alpha: the Q term's weight after normalising by the batch's mean |Q|."""
    critic_warmup_updates: int = 0
    """Critic steps before the first actor step: a fresh critic rates actions by their
    immediate reward only, and an actor that follows it early learns that greed."""
    precision: str = 'fp32'
    """Precision of the network passes: fp32, bf16 (autocast; weights, Adam state, targets
    and losses stay float32) or auto (bf16 where the device computes it natively)."""

    def __post_init__(self):
        """Validate values so a bad config fails when built, naming the field."""
        check_range('gamma', self.gamma, 0.0, 1.0)
        check_range('tau', self.tau, 0.0, 1.0, low_open=True)
        check_range('actor_lr', self.actor_lr, 0.0, low_open=True)
        check_range('critic_lr', self.critic_lr, 0.0, low_open=True)
        check_at_least(self, 1, 'batch_size', 'policy_frequency')
        check_at_least(self, 0.0, 'policy_noise', 'noise_clip', 'actor_pretanh_penalty',
                       'bc_weight', 'bc_alpha', 'critic_warmup_updates')
        for name in ('actor_grad_clip', 'critic_grad_clip'):
            value = getattr(self, name)
            if value is not None and value < 0.0:
                raise ValueError(f'{name} must be >= 0 or None, got {value}')
        check_choice('frame_scale', self.frame_scale, SCALES)
        check_choice('optimizer_impl', self.optimizer_impl, OPTIMIZER_IMPLS)
        check_choice('precision', self.precision, PRECISIONS)

    def to_dict(self) -> dict:
        """Return the config as a plain dict (JSON-serialisable, for checkpoint metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TD3Config:
        """Build a config from `to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Record no gradients for `module`'s weights (inputs still get them through it)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


class TD3:
    """TD3 learner: networks, targets, optimisers and the update step.

    `actor_cnn`, `actor`, `critic_cnn`, `critic` and their `target_*` copies (the target
    CNNs are None without `target_encoders`); `total_updates` counts critic steps.
    """

    def __init__(self, net_config: NetworkConfig | None = None,
                 config: TD3Config | None = None):
        """Build online and target networks and their optimisers on the configured device."""
        self.net_config = net_config or NetworkConfig()
        self.config = config or TD3Config()
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)
        self.total_updates = 0
        self._layout = torch.channels_last if self.config.channels_last else None

        seed = self.config.seed
        # Seed locally so building an agent does not reset the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.actor_cnn = self._place(NatureCNN(self.net_config))
            self.actor = self._place(Actor(self.net_config))
            self.critic_cnn = self._place(NatureCNN(self.net_config))
            self.critic = self._place(TwinCritic(self.net_config))
        self.target_actor = self._target_of(self.actor)
        self.target_critic = self._target_of(self.critic)
        if self.config.target_encoders:
            self.target_actor_cnn = self._target_of(self.actor_cnn)
            self.target_critic_cnn = self._target_of(self.critic_cnn)
        else:
            self.target_actor_cnn = self.target_critic_cnn = None

        self._noise_gen = torch.Generator(device=self.device)
        if seed is not None:
            self._noise_gen.manual_seed(seed)
        else:
            self._noise_gen.seed()

        self._actor_named = self._named_params(actor_cnn=self.actor_cnn, actor=self.actor)
        self._critic_named = self._named_params(critic_cnn=self.critic_cnn, critic=self.critic)
        self.actor_optimizer = self._adam([p for _, p in self._actor_named],
                                          self.config.actor_lr)
        self.critic_optimizer = self._adam([p for _, p in self._critic_named],
                                           self.config.critic_lr)
        self._polyak_pairs = self._target_pairs()

    def _place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self._layout is not None and isinstance(module, NatureCNN):
            module = module.to(memory_format=self._layout)
        return module

    @staticmethod
    def _target_of(module: nn.Module) -> nn.Module:
        target = copy.deepcopy(module)
        target.requires_grad_(False)
        return target

    @staticmethod
    def _named_params(**modules: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(f'{prefix}.{name}', param) for prefix, module in modules.items()
                for name, param in module.named_parameters()]

    def _adam(self, params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
        impl = self.config.optimizer_impl
        # Same Adam rule in every implementation; fused/foreach just batch the kernels.
        return torch.optim.Adam(params, lr=lr, fused=impl == 'fused' or None,
                                foreach=impl == 'foreach' if impl != 'fused' else None)

    def _target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pairs = [(self.target_actor, self.actor), (self.target_critic, self.critic)]
        if self.config.target_encoders:
            pairs += [(self.target_actor_cnn, self.actor_cnn),
                      (self.target_critic_cnn, self.critic_cnn)]
        targets, online = [], []
        for target, source in pairs:
            for (name_t, p_t), (name_s, p_s) in zip(target.named_parameters(),
                                                    source.named_parameters(), strict=True):
                assert name_t == name_s
                targets.append(p_t)
                online.append(p_s)
        return targets, online

    def modules(self) -> dict[str, nn.Module]:
        """Return every network by its state-tensor prefix (online first, then targets)."""
        named = {'actor_cnn': self.actor_cnn, 'actor': self.actor,
                 'critic_cnn': self.critic_cnn, 'critic': self.critic,
                 'target_actor': self.target_actor, 'target_critic': self.target_critic}
        if self.config.target_encoders:
            named['target_actor_cnn'] = self.target_actor_cnn
            named['target_critic_cnn'] = self.target_critic_cnn
        return named

    def prepare(self, batch) -> DeviceBatch:
        """Move one batch to the device once and scale its uint8 frames (the only place)."""
        if isinstance(batch, DeviceBatch):
            return batch
        return to_device_batch(batch, self.device, self.config.frame_scale,
                               self.config.channels_last)

    def _autocast(self):
        return autocast(self.device, self.precision)

    def target_actions(self, batch) -> torch.Tensor:
        """Return target policy actions at s' with clipped smoothing noise (TD3's a')."""
        b = self.prepare(batch)
        max_action = float(self.net_config.max_action)
        with torch.no_grad():
            action = self._target_policy(b.next_obs, b.next_vec)
            if self.config.policy_noise > 0.0:
                noise = torch.randn(action.shape, generator=self._noise_gen,
                                    device=action.device, dtype=action.dtype)
                clip = self.config.noise_clip * max_action
                noise = (noise * (self.config.policy_noise * max_action)).clamp_(-clip, clip)
                action = action + noise
            return action.clamp(-max_action, max_action)

    def td_target(self, batch) -> torch.Tensor:
        """Return y = r + gamma * (1 - terminated) * min(Q1', Q2')(s', a') (truncated: TD)."""
        b = self.prepare(batch)
        with torch.no_grad(), torch.profiler.record_function('td3.target'):
            next_action = self.target_actions(b)
            cnn = self.target_critic_cnn if self.config.target_encoders else self.critic_cnn
            with self._autocast():
                state = torch.cat([cnn(b.next_obs), b.next_vec], dim=1)
                values = torch.stack(self.target_critic(state, next_action)).float()
            next_q = values.min(dim=0).values.squeeze(1)
            return b.rewards + self.config.gamma * (1.0 - b.terminated) * next_q

    def critic_loss(self, batch, returns=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return MSE(Q1, y) + MSE(Q2, y) and metrics; y: `returns` where not NaN, else TD."""
        b = self.prepare(batch)
        target = self.td_target(b)
        if returns is not None:
            given = to_device(returns, self.device, torch.float32).reshape(target.shape)
            target = torch.where(torch.isnan(given), target, given)
        with torch.profiler.record_function('td3.critic_forward'), self._autocast():
            state = torch.cat([self.critic_cnn(b.obs), b.obs_vec], dim=1)
            q1, q2 = (q.float().squeeze(1) for q in self.critic(state, b.actions))
        loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        metrics = {'critic_loss': loss.detach(), 'q1_mean': q1.detach().mean(),
                   'q2_mean': q2.detach().mean(), 'target_q_mean': target.mean()}
        return loss, metrics

    def _actor_logits(self, b: DeviceBatch) -> torch.Tensor:
        """Return the online actor's pre-tanh outputs (float32) at the batch's observations."""
        with self._autocast():
            logits = self.actor.pre_tanh(torch.cat([self.actor_cnn(b.obs), b.obs_vec], dim=1))
        return logits.float()

    def _target_policy(self, frames: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Return the target actor's actions (float32, no noise, no grad)."""
        with torch.no_grad():
            cnn = self.target_actor_cnn if self.config.target_encoders else self.actor_cnn
            with self._autocast():
                action = self.target_actor(torch.cat([cnn(frames), vec], dim=1))
            return action.float()

    def actor_loss(self, batch, labels=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the actor loss (-mean Q1(s, pi(s)), or TD3+BC's) and metrics.

        Gradients reach only the actor CNN and MLP: the critic CNN runs under no_grad (same
        features, no wasted backward) and the heads' weights are frozen while the graph is
        built. With `bc_weight` > 0, `labels` (B, A) are the BC term's actions.
        """
        b = self.prepare(batch)
        config = self.config
        with torch.profiler.record_function('td3.actor_forward'):
            with torch.no_grad(), self._autocast():
                critic_state = torch.cat([self.critic_cnn(b.obs), b.obs_vec], dim=1)
            pre_tanh = self._actor_logits(b)
            action = self.actor.squash(pre_tanh)
            with _frozen(self.critic), self._autocast():
                q1 = self.critic.Q1(critic_state, action).float()
            loss = -q1.mean()
            metrics = {'actor_q': q1.detach().mean(),
                       'actor_pretanh_abs': pre_tanh.detach().abs().mean()}
            if config.bc_weight > 0.0:
                if labels is None:
                    raise ValueError('bc_weight > 0 needs labels (the actions to clone)')
                loss = loss * (config.bc_alpha / q1.detach().abs().mean().clamp_min(1e-6))
                target = to_device(labels, self.device, torch.float32).reshape(action.shape)
                bc = (action - target).square().mean()
                loss = loss + config.bc_weight * bc
                metrics['actor_bc_mse'] = bc.detach()
            if config.actor_pretanh_penalty > 0.0:
                loss = loss + config.actor_pretanh_penalty * pre_tanh.square().mean()
        metrics['actor_loss'] = loss.detach()
        return loss, metrics

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
              named: list[tuple[str, nn.Parameter]], max_norm: float | None,
              name: str) -> torch.Tensor | None:
        """Back-propagate `loss`, clip the global norm, step; return the norm (None: no clip)."""
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function(f'td3.{name}_backward'):
            loss.backward()
        with torch.profiler.record_function(f'td3.{name}_optim'):
            norm = None
            if max_norm:
                # foreach clipping multiplies by a clamped coefficient: no host sync.
                norm = nn.utils.clip_grad_norm_([p for _, p in named], max_norm, foreach=True)
            optimizer.step()
        return norm

    @torch.no_grad()
    def sync_targets(self):
        """Copy every online network into its target (a Polyak step with tau = 1)."""
        targets, online = self._polyak_pairs
        torch._foreach_copy_(targets, online)

    @torch.no_grad()
    def polyak_update(self):
        """Blend online weights into all targets: target = (1 - tau) * target + tau * online."""
        with torch.profiler.record_function('td3.polyak'):
            targets, online = self._polyak_pairs
            # Two foreach kernels over all targets instead of a Python loop per tensor.
            torch._foreach_mul_(targets, 1.0 - self.config.tau)
            torch._foreach_add_(targets, online, alpha=self.config.tau)

    def update(self, batch, labels=None, returns=None) -> dict[str, torch.Tensor]:
        """Do one critic step and, every `policy_frequency` calls, an actor step + polyak.

        No actor step in the first `critic_warmup_updates` critic steps (the targets are
        still blended); then the targets copy the warmed-up networks. `labels`: see
        `actor_loss`; `returns`: see `critic_loss`. Returns detached 0-d tensors (no host
        sync); actor metrics only on updates that stepped the actor.
        """
        b = self.prepare(batch)
        loss, metrics = self.critic_loss(b, returns)
        norm = self._step(self.critic_optimizer, loss, self._critic_named,
                          self.config.critic_grad_clip, 'critic')
        if norm is not None:
            metrics['critic_grad_norm'] = norm.detach()
        self.total_updates += 1
        if self.total_updates % self.config.policy_frequency == 0:
            if self.total_updates > self.config.critic_warmup_updates:
                loss, actor_metrics = self.actor_loss(b, labels)
                norm = self._step(self.actor_optimizer, loss, self._actor_named,
                                  self.config.actor_grad_clip, 'actor')
                metrics.update(actor_metrics)
                if norm is not None:
                    metrics['actor_grad_norm'] = norm.detach()
            self.polyak_update()
        if self.total_updates == self.config.critic_warmup_updates > 0:
            self.sync_targets()
        return metrics

    def bc_update(self, batch, labels) -> dict[str, torch.Tensor]:
        """Take one BC actor step towards `labels` (B, A); `sync_targets` after the last."""
        b = self.prepare(batch)
        with torch.profiler.record_function('td3.bc_forward'):
            pre_tanh = self._actor_logits(b)
            action = self.actor.squash(pre_tanh)
            target = to_device(labels, self.device, torch.float32).reshape(action.shape)
            bc = (action - target).square().mean()
            loss = bc
            if self.config.actor_pretanh_penalty > 0.0:
                loss = loss + self.config.actor_pretanh_penalty * pre_tanh.square().mean()
        norm = self._step(self.actor_optimizer, loss, self._actor_named,
                          self.config.actor_grad_clip, 'actor')
        metrics = {'bc_mse': bc.detach(), 'actor_pretanh_abs': pre_tanh.detach().abs().mean()}
        if norm is not None:
            metrics['actor_grad_norm'] = norm.detach()
        return metrics

    @torch.no_grad()
    def act(self, batch) -> torch.Tensor:
        """Return the online actor's actions (float32, no noise) at the batch's observations."""
        b = self.prepare(batch)
        return self.actor.squash(self._actor_logits(b))

    def load_policy_state(self, state: dict[str, torch.Tensor]):
        """Start the actor (online and target) from `ActorPolicy` weights (cnn.*, actor.*)."""
        for prefix, modules in (('cnn.', (self.actor_cnn, self.target_actor_cnn)),
                                ('actor.', (self.actor, self.target_actor))):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            for module in modules:
                if module is not None:
                    module.load_state_dict(part, strict=True)

    def policy_state(self) -> dict[str, torch.Tensor]:
        """Return the actor CNN + MLP weights with `ActorPolicy` names (cnn.*, actor.*)."""
        state = {f'cnn.{k}': td3_state.export(v) for k, v in self.actor_cnn.state_dict().items()}
        state.update({f'actor.{k}': td3_state.export(v)
                      for k, v in self.actor.state_dict().items()})
        return state

    @torch.no_grad()
    def activation_health(self, batch) -> dict[str, float]:
        """Return dead-ReLU diagnostics of the CNNs and tanh saturation of the actor.

        `<cnn>.conv<i>.`: negative_fraction, dead_unit_fraction (units <= 0 for every sample)
        and dead_channel_fraction (channels <= 0 everywhere); `actor.saturated_fraction`:
        outputs with |pre-tanh| > 3 (tanh's slope below 0.01).
        """
        b = self.prepare(batch)
        health = {}
        logits = self._actor_logits(b)
        health['actor.pretanh_abs_mean'] = float(logits.abs().mean())
        health['actor.saturated_fraction'] = float((logits.abs() > 3.0).float().mean())
        for name, cnn in (('actor_cnn', self.actor_cnn), ('critic_cnn', self.critic_cnn)):
            for index, pre in enumerate(cnn.pre_activations(b.obs), start=1):
                inactive = pre <= 0
                prefix = f'{name}.conv{index}'
                health[f'{prefix}.negative_fraction'] = float((pre < 0).float().mean())
                health[f'{prefix}.dead_unit_fraction'] = float(
                    inactive.all(dim=0).float().mean())
                health[f'{prefix}.dead_channel_fraction'] = float(
                    inactive.transpose(0, 1).flatten(1).all(dim=1).float().mean())
        return health

    def optimizers(self) -> tuple[tuple[str, torch.optim.Optimizer, list], ...]:
        """Return (name, optimizer, named parameters) for the actor and the critic."""
        return (('actor', self.actor_optimizer, self._actor_named),
                ('critic', self.critic_optimizer, self._critic_named))

    @property
    def noise_generator(self) -> torch.Generator:
        """Return the generator of the target smoothing noise (saved with the state)."""
        return self._noise_gen

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Return the full training state as flat named CPU tensors plus JSON metadata."""
        return td3_state.state_tensors(self)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], metadata: dict):
        """Restore a state from `state_tensors` exactly (see `td3_state.load_state_tensors`)."""
        td3_state.load_state_tensors(self, tensors, metadata)


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Convert `update` metrics to Python floats (one host sync per value; do it when logging)."""
    return {k: float(v) for k, v in metrics.items()}
