"""TD3 learner for the camera driving policy (no ROS imports).

Twin Delayed DDPG (Fujimoto et al. 2018, arXiv:1802.09477) over the networks in
`av_td3_ros.driving.networks`: the actor and the critics each own a NatureCNN (one critic CNN feeds
both Q heads, as in av_td3_system), and every online network has a target copy.

Batches arrive with uint8 frames; `TD3.prepare` is the ONE place where frames become floats
(`frame_scale`), so the learner and the replay buffer never disagree about scaling.

Speed notes (2-core CPU, batch 256): the convolutions dominate. Each optimisation below keeps
the TD3 update mathematically unchanged and says why next to its code:
channels_last convolutions, no critic-CNN backward in the actor step, frozen Q1 weights during
the actor loss, fused Adam, foreach polyak, no host syncs in `update`.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from av_td3_ros.driving.inference import resolve_device
from av_td3_ros.driving.networks import Actor, CriticEnsemble, NatureCNN, NetworkConfig
from av_td3_ros.learning.config_diff import config_differences

from .replay_buffer import Batch

FRAME_SCALES = ('zero_centered', 'unit')
OPTIMIZER_IMPLS = ('fused', 'foreach', 'for_loop')
PRECISIONS = ('fp32', 'bf16', 'auto')
ACTOR_OBJECTIVES = ('q1', 'min', 'agreement')
CRITIC_ACTIONS = ('absolute', 'relative')
TRUST_ANCHORS = ('target', 'trusted')
STATE_FORMAT = 'av_td3_ros.td3/1'


@dataclass(frozen=True)
class TD3Config:
    """Hyperparameters of the TD3 learner (defaults: av_td3_system's training config)."""

    gamma: float = 0.99
    """Discount factor."""
    reward_scale: float = 1.0
    """The critic learns Q of the rewards times this (Monte Carlo targets are scaled alike);
    reported Q values are divided back into reward units. At gamma 0.998 the stand-in's Q is
    ~1000: a critic whose hidden layers are normalised (`critic_layer_norm`) carries that
    scale in its last layer alone and, at Adam's step size, needs thousands of updates to
    reach it. 0.01 brings Q to ~10."""
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
    """Weight of mean(pre-tanh logits ** 2) added to the actor loss (0: plain TD3, as
    av_td3_system). A young critic's action gradient points the same way for many steps and
    Adam's normalised steps then drive the logits into tanh's flat tails, where the gradient
    falls below Adam's epsilon (measured: global norm 3e-8) and the actor stops learning;
    this pull toward zero grows with the logits and does not pass through tanh, so it keeps
    them where the critic can move them."""
    target_encoders: bool = True
    """Keep target copies of both CNNs (textbook TD3); False reproduces av_td3_system, whose
    target Q uses the online critic CNN (and online actor CNN) under no_grad."""
    frame_scale: str = 'zero_centered'
    """uint8 -> float mapping: zero_centered (x/255 - 0.5)/0.5 in [-1, 1]; unit x/255."""
    device: str = 'auto'
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    channels_last: bool = True
    """Run the CNNs in channels_last (NHWC) layout: same maths, about 3x faster conv1
    weight gradients on CPU (oneDNN)."""
    optimizer_impl: str = 'fused'
    """Adam implementation: fused, foreach or for_loop (same update rule)."""
    seed: int | None = None
    """Seed for network initialisation and the target smoothing noise; None: nondeterministic."""
    bc_weight: float = 0.0
    """Weight of the behaviour-cloning term of TD3+BC (Fujimoto & Gu 2021): with a weight
    w > 0 the actor loss is -alpha * mean Q(s, pi(s)) / mean|Q| + w * mean (pi(s) - a*)^2,
    where a* are the labels passed to `update` (e.g. the route expert's actions). 0: plain
    TD3 (no labels needed). Annealing w towards 0 hands the actor over to the critic."""
    bc_alpha: float = 2.5
    """TD3+BC's alpha: the Q term's weight after normalising by the batch's mean |Q|."""
    trust_region_weight: float = 0.0
    """Weight of mean (pi(s) - pi'(s))^2 in the actor loss, pi' being the actor's own
    Polyak-averaged target (iterative policy regularisation, as PROTO, Li et al. 2023,
    arXiv:2305.15669). No labels: the anchor follows the actor at `tau`, so the policy can
    go anywhere the critic leads, but each step stays near the policy the data came from
    while the critic learns what the change does. With a weight > 0 the Q term is
    normalised as in TD3+BC (alpha / mean |Q|). On the stand-in it delays the collapse of
    plain TD3 fine-tuning but does not stop it (README "Fine-tuning with TD3"). With
    `trust_region_anchor: trusted` the anchor is another policy."""
    trust_region_anchor: str = 'target'
    """What the trust region pulls the actor towards: target (the Polyak-averaged target
    actor, which follows the actor on a clock) or trusted (a frozen copy of the actor,
    `trusted_actor_cnn` and `trusted_actor`, set when the actor is loaded and moved only by
    `trust_actor`; `revert_actor` puts the actor back on it). The learner's evidence gate
    (`learning/policy_gate.py`) moves it when the acting policy's own episodes show that
    the actor's move did no harm, and reverts the actor when they show harm."""
    freeze_actor_encoder: bool = False
    """Train only the actor's MLP head, keeping its CNN as it started (a cloned policy's
    visual features then cannot be worn down by the critic's noisy action gradients)."""
    critic_warmup_updates: int = 0
    """Critic steps before the first actor step. A critic fresh from initialisation rates
    actions by their immediate reward only (its targets have not propagated the future yet),
    and an actor that follows it early learns that greed; until then the targets still track
    the critic and the actor is left as it started."""
    critic_heads: int = 2
    """Q heads on the critic CNN. 2 is TD3. With more, each TD target takes the minimum of
    two heads drawn at random (REDQ, Chen et al. 2021, arXiv:2101.05982), so heads stay
    independent estimates; `actor_objective: min` then reads their disagreement."""
    critic_layer_norm: bool = False
    """LayerNorm before each hidden ReLU of the critic heads (see `Critic`): bounds how far
    Q can extrapolate beyond the data. Off: the av_td3_system critic."""
    critic_members: int = 1
    """Independent critics, each with its own CNN, `critic_heads` heads, target copies and TD
    targets (one smoothing-noise draw shared). 1 is TD3. Critics that differ only in their
    initialisation fit the same returns equally well yet disagree on the slope of Q in the
    action wherever the data do not vary the action enough to identify it (README
    "Fine-tuning with TD3"); `actor_objective: agreement` reads that disagreement. Each
    member costs one more critic CNN forward and backward per update."""
    critic_bootstrap: bool = False
    """Each critic member learns from its own fixed half of the transitions (chosen by the
    transition's buffer index, `bootstrap_mask`), as a bootstrapped ensemble (Osband et al.
    2016, arXiv:1602.04621): where a slope of Q is only a quirk of the data at hand, members
    that saw different halves disagree on it, and `actor_objective: agreement` does not
    follow it. Needs batches that carry their buffer indices (the replay buffer's do)."""
    critic_action: str = 'absolute'
    """How the critic reads the action: absolute (TD3) or relative (its offset from the
    target actor's action at the same state). The stored actions are the acting policy's
    plus exploration noise, so an absolute action also tells the critic about the state (it
    is nearly a function of it), and a critic that has not separated the two can learn a
    slope in the action that is really a difference between states. Measured from the
    policy the data came from, the action is the noise alone at first, which is independent
    of the state: its effect on the return is what the slope can then learn."""
    actor_objective: str = 'q1'
    """What the actor maximises: q1 (TD3: Q1 alone), min (the minimum over the first
    critic's heads) or agreement (the minimum over `critic_members` of each member's
    advantage Q1_m(s, pi(s)) - Q1_m(s, a) over the stored action a: the actor moves only
    where every member says it improves on what was done; with one member it is q1's
    gradient).
    A ReLU critic is piecewise linear in the action and, beyond the actions in the data (the
    policy's own +- exploration noise), extrapolates linearly, so Q1's maximum lies at a
    corner of the action box and the actor can walk there. Heads fitted to the same data
    extrapolate with different slopes; the minimum of several lines peaks where they agree:
    on the data (test_td3.py). It did not stop the stand-in fine-tuning's collapse, which
    comes from the states a changed policy reaches (README "Fine-tuning with TD3")."""
    precision: str = 'fp32'
    """Compute precision of the network passes in an update: fp32, bf16 (autocast: convs and
    matmuls in bfloat16; master weights, Adam state, targets, TD errors, losses and Polyak
    averaging stay float32), or auto (bf16 where the device computes it natively: CPUs with
    AVX512-BF16 or AMX, CUDA GPUs with bf16 support; else fp32)."""

    def __post_init__(self):
        """Validate values so a bad config fails when built, naming the field."""
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f'gamma must be in [0, 1], got {self.gamma}')
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f'tau must be in (0, 1], got {self.tau}')
        for name in ('actor_lr', 'critic_lr', 'reward_scale'):
            if not getattr(self, name) > 0.0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.critic_heads < 2:
            raise ValueError(f'critic_heads must be >= 2, got {self.critic_heads}')
        if self.critic_members < 1:
            raise ValueError(f'critic_members must be >= 1, got {self.critic_members}')
        if self.critic_action not in CRITIC_ACTIONS:
            raise ValueError(f'critic_action must be one of {CRITIC_ACTIONS}, '
                             f'got {self.critic_action!r}')
        if self.trust_region_anchor not in TRUST_ANCHORS:
            raise ValueError(f'trust_region_anchor must be one of {TRUST_ANCHORS}, '
                             f'got {self.trust_region_anchor!r}')
        if self.actor_objective not in ACTOR_OBJECTIVES:
            raise ValueError(f'actor_objective must be one of {ACTOR_OBJECTIVES}, '
                             f'got {self.actor_objective!r}')
        for name in ('batch_size', 'policy_frequency'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('policy_noise', 'noise_clip', 'actor_pretanh_penalty', 'bc_weight',
                     'bc_alpha', 'trust_region_weight', 'critic_warmup_updates'):
            if getattr(self, name) < 0.0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('actor_grad_clip', 'critic_grad_clip'):
            value = getattr(self, name)
            if value is not None and value < 0.0:
                raise ValueError(f'{name} must be >= 0 or None, got {value}')
        if self.frame_scale not in FRAME_SCALES:
            raise ValueError(f'frame_scale must be one of {FRAME_SCALES}, '
                             f'got {self.frame_scale!r}')
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ValueError(f'optimizer_impl must be one of {OPTIMIZER_IMPLS}, '
                             f'got {self.optimizer_impl!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')

    def to_dict(self) -> dict:
        """Return the config as a plain dict (JSON-serialisable, for checkpoint metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TD3Config:
        """Build a config from `to_dict` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class DeviceBatch(NamedTuple):
    """A batch on the learner's device with frames already scaled to float32."""

    obs: torch.Tensor
    obs_vec: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    next_vec: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    indices: torch.Tensor | None = None
    """The transitions' replay-buffer indices (int64), when the batch came with them."""


def bootstrap_mask(indices: torch.Tensor, member: int) -> torch.Tensor:
    """Return 1.0 for the transitions (by buffer index) that critic `member` learns from.

    A fixed pseudo-random half per member: an integer hash of (index, member), so a
    transition keeps its place in every batch it is drawn in, and in a resumed run.
    """
    mixed = (indices.to(torch.int64) * 2654435761 + (member + 1) * 1013904223) % 2**32
    mixed = ((mixed ^ (mixed >> 15)) * 668265261) % 2**32
    return ((mixed >> 13) & 1).to(torch.float32)


def frames_to_float(frames: torch.Tensor, scale: str = 'zero_centered',
                    channels_last: bool = False) -> torch.Tensor:
    """Convert uint8 frames (B, F, H, W) to float32 with the given scale.

    zero_centered computes (x/255 - 0.5)/0.5 with the same float32 operations, in the same
    order, as `preprocessing.scale_frames`, so the learner sees bit-identical inputs to the
    driver. The optional NHWC layout change is done on the uint8 data, before the cast.
    """
    if frames.dtype != torch.uint8:
        raise TypeError(f'frames must be uint8 (scaling happens once, here), got {frames.dtype}')
    if scale not in FRAME_SCALES:
        raise ValueError(f'scale must be one of {FRAME_SCALES}, got {scale!r}')
    if channels_last:
        # Interleave the channel planes while still uint8 (a quarter of the bytes) with one
        # stack; about 5x faster on CPU than a strided float copy into NHWC.
        out = torch.stack(frames.unbind(1), dim=-1).to(torch.float32)
    else:
        out = frames.to(torch.float32)
    out.div_(255.0)
    if scale == 'zero_centered':
        out.sub_(0.5).div_(0.5)
    # The NHWC buffer viewed as (B, C, H, W): same values, channels_last strides.
    return out.permute(0, 3, 1, 2) if channels_last else out


def _grad_clip_value(value: float | None) -> float | None:
    return value if value else None


def native_bf16(device: torch.device) -> bool:
    """Return True when `device` runs bfloat16 convolutions and matmuls in hardware."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        # oneDNN uses AMX tiles or AVX512-BF16 dot products; elsewhere bf16 is emulated
        # and slower than float32.
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """Return 'bf16' or 'fp32' for a configured precision on `device`."""
    if name == 'auto':
        return 'bf16' if native_bf16(device) else 'fp32'
    return name


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Build graphs without recording gradients for `module`'s parameters, then restore.

    Inputs still get gradients through the module; its weights do not, so a backward pass
    cannot leak into them (and skips their weight-gradient matmuls).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def _export(tensor: torch.Tensor) -> torch.Tensor:
    """Return a detached, contiguous CPU copy (safetensors needs contiguous, unaliased data)."""
    return tensor.detach().to('cpu', copy=True).contiguous()


class TD3:
    """TD3 learner: networks, targets, optimisers and the update step.

    Attributes: `actor_cnn`, `actor` (the policy), `critic_cnn`, `critic` (CriticEnsemble with
    `Q1` ... `QN`), their targets `target_actor_cnn`, `target_actor`, `target_critic_cnn`,
    `target_critic` (the target CNNs are None when `target_encoders` is False), the Adam
    optimisers `actor_optimizer` (actor CNN + MLP) and `critic_optimizer` (critic CNN + heads),
    and `total_updates` (critic steps done). `member_cnns`, `member_critics`,
    `member_target_cnns` and `member_target_critics` list every critic member
    (`critic_members`); the first is `critic_cnn`, `critic` and their targets.
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
            self.member_cnns, self.member_critics = [], []
            for _ in range(self.config.critic_members):
                # Member 1 is built first, so a seed gives the same TD3 critic whatever the
                # number of members.
                self.member_cnns.append(self._place(NatureCNN(self.net_config)))
                self.member_critics.append(self._place(CriticEnsemble(
                    self.net_config, self.config.critic_heads, self.config.critic_layer_norm)))
        self.critic_cnn, self.critic = self.member_cnns[0], self.member_critics[0]
        self.target_actor = self._target_of(self.actor)
        self.member_target_critics = [self._target_of(c) for c in self.member_critics]
        self.target_critic = self.member_target_critics[0]
        if self.config.target_encoders:
            self.target_actor_cnn = self._target_of(self.actor_cnn)
            self.member_target_cnns = [self._target_of(c) for c in self.member_cnns]
        else:
            self.target_actor_cnn = None
            self.member_target_cnns = [None] * self.config.critic_members
        self.target_critic_cnn = self.member_target_cnns[0]
        if self.config.trust_region_anchor == 'trusted':
            self.trusted_actor_cnn = self._target_of(self.actor_cnn)
            self.trusted_actor = self._target_of(self.actor)
        else:
            self.trusted_actor_cnn = self.trusted_actor = None

        self._noise_gen = torch.Generator(device=self.device)
        if seed is not None:
            self._noise_gen.manual_seed(seed)
        else:
            self._noise_gen.seed()

        if self.config.freeze_actor_encoder:
            self.actor_cnn.requires_grad_(False)
            self._actor_named = self._named_params(actor=self.actor)
        else:
            self._actor_named = self._named_params(actor_cnn=self.actor_cnn, actor=self.actor)
        self._member_named = [
            self._named_params(**{f'{prefix}_cnn': cnn, prefix: critic})
            for prefix, cnn, critic in zip(self._member_prefixes(), self.member_cnns,
                                           self.member_critics, strict=True)]
        self._critic_named = [pair for named in self._member_named for pair in named]
        self.actor_optimizer = self._adam([p for _, p in self._actor_named],
                                          self.config.actor_lr)
        self.critic_optimizer = self._adam([p for _, p in self._critic_named],
                                           self.config.critic_lr)
        self._polyak_pairs = self._target_pairs()

    # ---- construction helpers -------------------------------------------------------------

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

    def _member_prefixes(self) -> list[str]:
        """Return each critic member's state-tensor prefix: critic, critic2, critic3, ..."""
        return ['critic' if index == 1 else f'critic{index}'
                for index in range(1, self.config.critic_members + 1)]

    def _target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pairs = [(self.target_actor, self.actor)]
        pairs += list(zip(self.member_target_critics, self.member_critics, strict=True))
        if self.config.target_encoders:
            pairs += [(self.target_actor_cnn, self.actor_cnn)]
            pairs += list(zip(self.member_target_cnns, self.member_cnns, strict=True))
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
        named = {'actor_cnn': self.actor_cnn, 'actor': self.actor}
        members = list(zip(self._member_prefixes(), self.member_cnns, self.member_critics,
                           self.member_target_cnns, self.member_target_critics, strict=True))
        for prefix, cnn, critic, _, _ in members:
            named.update({f'{prefix}_cnn': cnn, prefix: critic})
        named['target_actor'] = self.target_actor
        for prefix, _, _, _, target in members:
            named[f'target_{prefix}'] = target
        if self.config.target_encoders:
            named['target_actor_cnn'] = self.target_actor_cnn
            for prefix, _, _, target_cnn, _ in members:
                named[f'target_{prefix}_cnn'] = target_cnn
        if self.trusted_actor is not None:
            named['trusted_actor_cnn'] = self.trusted_actor_cnn
            named['trusted_actor'] = self.trusted_actor
        return named

    # ---- data -----------------------------------------------------------------------------

    def _to_device(self, value, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(np.asarray(value))
        if dtype is not None and tensor.dtype != dtype and tensor.dtype != torch.uint8:
            tensor = tensor.to(dtype)
        if tensor.device != self.device:
            if self.device.type == 'cuda':
                # Pinned host memory allows an asynchronous copy that overlaps compute.
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            else:
                tensor = tensor.to(self.device)
        return tensor

    def prepare(self, batch: Batch | DeviceBatch) -> DeviceBatch:
        """Move one batch to the device once and scale its uint8 frames (the only place)."""
        if isinstance(batch, DeviceBatch):
            return batch
        with torch.profiler.record_function('td3.prepare'):
            scale, cl = self.config.frame_scale, self.config.channels_last
            f32 = torch.float32
            obs = frames_to_float(self._to_device(batch.obs_frames), scale, cl)
            next_obs = frames_to_float(self._to_device(batch.next_frames), scale, cl)
            # Frames before an episode's first one are 0.0 after scaling, as in the driver's
            # zero-filled stack (the buffer stores them as uint8 0, which would scale to -1).
            for frames, name in ((obs, 'obs_missing'), (next_obs, 'next_missing')):
                missing = getattr(batch, name, None)
                if missing is not None and bool(np.any(missing)):
                    frames[self._to_device(missing).to(torch.bool)] = 0.0
            size = obs.shape[0]
            return DeviceBatch(
                obs=obs,
                obs_vec=self._to_device(batch.obs_vec, f32).reshape(size, -1),
                actions=self._to_device(batch.actions, f32).reshape(size, -1),
                rewards=self._to_device(batch.rewards, f32).reshape(size).to(f32),
                next_obs=next_obs,
                next_vec=self._to_device(batch.next_vec, f32).reshape(size, -1),
                terminated=self._to_device(batch.terminated).reshape(size).to(f32),
                truncated=self._to_device(batch.truncated).reshape(size).to(f32),
                indices=(None if getattr(batch, 'indices', None) is None
                         else self._to_device(np.asarray(batch.indices, np.int64))),
            )

    # ---- losses ---------------------------------------------------------------------------

    def _autocast(self):
        """Return the context that runs network passes in the update's precision.

        Autocast keeps float32 master weights and casts them to bfloat16 per op, so gradients
        reach the float32 parameters and Adam; callers cast network outputs back to float32
        before any target, TD error or loss arithmetic.
        """
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == 'bf16')

    def target_actions(self, batch) -> torch.Tensor:
        """Return target policy actions at the next observation with clipped smoothing noise.

        a' = clip(pi'(s') + clip(N(0, policy_noise), -noise_clip, noise_clip), -max, max),
        with both noise terms scaled by max_action.
        """
        return self._target_actions(self.prepare(batch))[0]

    def _target_actions(self, b: DeviceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `target_actions` and the target actor's noiseless action pi'(s')."""
        max_action = float(self.net_config.max_action)
        with torch.no_grad():
            mean = action = self._target_policy(b.next_obs, b.next_vec)
            if self.config.policy_noise > 0.0:
                noise = torch.randn(action.shape, generator=self._noise_gen,
                                    device=action.device, dtype=action.dtype)
                clip = self.config.noise_clip * max_action
                noise = (noise * (self.config.policy_noise * max_action)).clamp_(-clip, clip)
                action = action + noise
            return action.clamp(-max_action, max_action), mean

    def action_anchor(self, frames: torch.Tensor, vec: torch.Tensor) -> torch.Tensor | None:
        """Return what the critic measures actions from at these states (`critic_action`).

        None for absolute actions; the target actor's action for relative ones.
        """
        if self.config.critic_action == 'absolute':
            return None
        return self._target_policy(frames, vec)

    @staticmethod
    def critic_input(action: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """Return the action as the critic reads it: itself, or its offset from `anchor`."""
        return action if anchor is None else action - anchor

    def _target_pair(self) -> torch.Tensor | None:
        """Return the indices (2,) of the target heads whose minimum makes the TD target.

        Two heads: None, meaning both (TD3; no random draw, so the smoothing-noise stream is
        unchanged). More: two drawn without replacement from the noise generator (saved with
        the state), left on the device so that no host sync is needed.
        """
        heads = self.config.critic_heads
        if heads == 2:
            return None
        return torch.randperm(heads, generator=self._noise_gen, device=self.device)[:2]

    def td_target(self, batch) -> torch.Tensor:
        """Return y = r + gamma * (1 - terminated) * min(Qi', Qj')(s', a'), shape (B,).

        i, j: both heads of TD3's pair, or two drawn at random from a larger ensemble.
        Truncation (time limit) keeps bootstrapping: only `terminated` zeroes the tail.
        With several `critic_members`, this is the first member's target (`member_targets`).
        """
        return self.member_targets(batch)[0]

    def member_targets(self, batch) -> list[torch.Tensor]:
        """Return each critic member's TD target from its own target networks, (B,) each.

        One draw of smoothing noise (and of the head pair) serves every member, so members
        differ by what they learnt, not by the noise they were given.
        """
        b = self.prepare(batch)
        with torch.no_grad(), torch.profiler.record_function('td3.target'):
            next_action, next_mean = self._target_actions(b)
            if self.config.critic_action == 'relative':
                next_action = next_action - next_mean
            pair = self._target_pair()
            rewards = b.rewards * self.config.reward_scale
            targets = []
            for index, target_critic in enumerate(self.member_target_critics):
                cnn = (self.member_target_cnns[index] if self.config.target_encoders
                       else self.member_cnns[index])
                with self._autocast():
                    state = torch.cat([cnn(b.next_obs), b.next_vec], dim=1)
                    values = torch.stack(target_critic(state, next_action)).float()
                if pair is not None:
                    values = values.index_select(0, pair)
                next_q = values.min(dim=0).values.squeeze(1)
                targets.append(rewards + self.config.gamma * (1.0 - b.terminated) * next_q)
            return targets

    def critic_loss(self, batch, returns=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the sum over members and heads of MSE(Qi, y) and detached metrics.

        y is each member's TD target; where `returns` (B,) holds a number instead of NaN, y
        is that number (e.g. a Monte Carlo return of the behaviour policy during a critic
        warm-up) times `reward_scale`. With `critic_bootstrap` each member's mean runs over
        its own half of the batch. The Q metrics are the first member's, in reward units.
        """
        b = self.prepare(batch)
        targets = self.member_targets(b)
        if returns is not None:
            given = self._to_device(returns, torch.float32).reshape(targets[0].shape)
            given = given * self.config.reward_scale
            targets = [torch.where(torch.isnan(given), y, given) for y in targets]
        if self.config.critic_bootstrap and b.indices is None:
            raise ValueError('critic_bootstrap needs batches with their buffer indices')
        loss, first = 0.0, None
        actions = self.critic_input(b.actions, self.action_anchor(b.obs, b.obs_vec))
        with torch.profiler.record_function('td3.critic_forward'):
            for member, (cnn, critic, y) in enumerate(zip(
                    self.member_cnns, self.member_critics, targets, strict=True)):
                with self._autocast():
                    state = torch.cat([cnn(b.obs), b.obs_vec], dim=1)
                    values = [q.float().squeeze(1) for q in critic(state, actions)]
                if self.config.critic_bootstrap:
                    mask = bootstrap_mask(b.indices, member)
                    share = mask.sum().clamp_min(1.0)
                    loss = loss + sum(((q - y).square() * mask).sum() / share for q in values)
                else:
                    loss = loss + sum(F.mse_loss(q, y) for q in values)
                first = values if first is None else first
        q1, q2 = first[0], first[1]
        unit = 1.0 / self.config.reward_scale
        metrics = {'critic_loss': loss.detach(), 'q1_mean': q1.detach().mean() * unit,
                   'q2_mean': q2.detach().mean() * unit,
                   'target_q_mean': targets[0].mean() * unit}
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

    def _trusted_policy(self, frames: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Return the trusted actor's actions (float32, no grad)."""
        with torch.no_grad(), self._autocast():
            action = self.trusted_actor(torch.cat([self.trusted_actor_cnn(frames), vec], dim=1))
        return action.float()

    @torch.no_grad()
    def critic_states(self, b: DeviceBatch) -> list[torch.Tensor]:
        """Return each critic member's CNN features + kinematic vector at the observations."""
        with self._autocast():
            return [torch.cat([cnn(b.obs), b.obs_vec], dim=1) for cnn in self.member_cnns]

    def objective_q(self, critic_states: list[torch.Tensor], action: torch.Tensor,
                    data_actions: torch.Tensor | None = None,
                    anchor: torch.Tensor | None = None) -> torch.Tensor:
        """Return what the actor maximises at (state, action), (B, 1) float32.

        `critic_states`: from `critic_states`; `anchor`: from `action_anchor`. q1: the first
        member's Q1; min: the minimum over its heads; agreement: the minimum over members of
        Q1_m(s, action) - Q1_m(s, data_actions). Gradients flow to `action` (and to the heads
        unless the caller freezes them).
        """
        objective = self.config.actor_objective
        action = self.critic_input(action, anchor)
        if data_actions is not None:
            data_actions = self.critic_input(data_actions, anchor)
        with self._autocast():
            if objective == 'q1':
                return self.critic.Q1(critic_states[0], action).float()
            if objective == 'min':
                values = torch.cat(self.critic(critic_states[0], action), dim=1).float()
                return values.min(dim=1, keepdim=True).values
            if data_actions is None:
                raise ValueError('actor_objective agreement needs the stored actions')
            advantages = []
            for critic, state in zip(self.member_critics, critic_states, strict=True):
                with torch.no_grad():
                    done = critic.Q1(state, data_actions).float()
                advantages.append(critic.Q1(state, action).float() - done)
            return torch.cat(advantages, dim=1).min(dim=1, keepdim=True).values

    def actor_loss(self, batch, labels=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the actor loss (-mean Q(s, pi(s)), or TD3+BC's) and metrics.

        Q is `objective_q`: Q1 (TD3) or the minimum over the heads.

        Gradients reach only the actor CNN and MLP. With `bc_weight` > 0, `labels` (B, A) are
        the actions the BC term pulls towards and the Q term is normalised by mean |Q1|.

        The critic CNN runs under no_grad (the actor loss does not train it, so its backward
        would be wasted work; the features use the current critic weights, exactly as the
        textbook graph would) and the heads' weights are frozen while the graph is built, so a
        backward pass leaves every critic gradient untouched.
        """
        b = self.prepare(batch)
        with torch.profiler.record_function('td3.actor_forward'):
            critic_states = self.critic_states(b)
            anchor = self.action_anchor(b.obs, b.obs_vec)
            pre_tanh = self._actor_logits(b)
            action = self.actor.squash(pre_tanh)
            with contextlib.ExitStack() as frozen:
                for critic in self.member_critics:
                    frozen.enter_context(_frozen(critic))
                q1 = self.objective_q(critic_states, action, b.actions, anchor)
            loss = -q1.mean()
            metrics = {'actor_q': q1.detach().mean() / self.config.reward_scale,
                       'actor_pretanh_abs': pre_tanh.detach().abs().mean()}
            config = self.config
            if config.bc_weight > 0.0 or config.trust_region_weight > 0.0:
                level = q1.detach()
                if config.actor_objective == 'agreement':
                    # An advantage is ~0; TD3+BC's normalisation needs the Q level itself.
                    with torch.no_grad(), self._autocast():
                        level = self.critic.Q1(critic_states[0],
                                               self.critic_input(b.actions, anchor)).float()
                loss = loss * (config.bc_alpha / level.abs().mean().clamp_min(1e-6))
            if config.bc_weight > 0.0:
                if labels is None:
                    raise ValueError('bc_weight > 0 needs labels (the actions to clone)')
                target = self._to_device(labels, torch.float32).reshape(action.shape)
                bc = (action - target).square().mean()
                loss = loss + config.bc_weight * bc
                metrics['actor_bc_mse'] = bc.detach()
            if config.trust_region_weight > 0.0:
                if config.trust_region_anchor == 'trusted':
                    target = self._trusted_policy(b.obs, b.obs_vec)
                elif anchor is not None:  # a relative critic's anchor: the same target action
                    target = anchor
                else:
                    target = self._target_policy(b.obs, b.obs_vec)
                drift = (action - target).square().mean()
                loss = loss + config.trust_region_weight * drift
                metrics['actor_drift_mse'] = drift.detach()
            if self.config.actor_pretanh_penalty > 0.0:
                loss = loss + self.config.actor_pretanh_penalty * pre_tanh.square().mean()
        metrics['actor_loss'] = loss.detach()
        return loss, metrics

    # ---- update ---------------------------------------------------------------------------

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
              param_groups: list[list[nn.Parameter]], max_norm: float | None, name: str
              ) -> torch.Tensor | None:
        """Back-propagate `loss`, clip each group's global norm, step; return the largest norm.

        Critic members are clipped one by one, so adding a member does not change how the
        others' gradients are clipped.
        """
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function(f'td3.{name}_backward'):
            loss.backward()
        with torch.profiler.record_function(f'td3.{name}_optim'):
            norm = None
            if max_norm is not None:
                # foreach clipping multiplies by a clamped coefficient: no host sync.
                norms = [nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
                         for params in param_groups]
                norm = torch.stack(norms).max()
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

        No actor step happens during the first `critic_warmup_updates` critic steps (the
        targets are still blended), and when the warm-up ends the targets become exact copies
        of the online networks, so bootstrapping starts from the warmed-up critic. `labels`
        are the BC term's actions (see `actor_loss`); `returns` replace TD targets where they
        are not NaN (see `critic_loss`).
        Returns detached 0-d tensors (no host sync here); call float() on them when logging.
        Actor metrics appear only on updates that stepped the actor.
        """
        b = self.prepare(batch)
        loss, metrics = self.critic_loss(b, returns)
        norm = self._step(self.critic_optimizer, loss,
                          [[p for _, p in named] for named in self._member_named],
                          _grad_clip_value(self.config.critic_grad_clip), 'critic')
        if norm is not None:
            metrics['critic_grad_norm'] = norm.detach()
        self.total_updates += 1
        if self.total_updates % self.config.policy_frequency == 0:
            if self.total_updates > self.config.critic_warmup_updates:
                loss, actor_metrics = self.actor_loss(b, labels)
                norm = self._step(self.actor_optimizer, loss,
                                  [[p for _, p in self._actor_named]],
                                  _grad_clip_value(self.config.actor_grad_clip), 'actor')
                metrics.update(actor_metrics)
                if norm is not None:
                    metrics['actor_grad_norm'] = norm.detach()
            self.polyak_update()
        if self.total_updates == self.config.critic_warmup_updates > 0:
            self.sync_targets()
        return metrics

    def bc_update(self, batch, labels) -> dict[str, torch.Tensor]:
        """Take one actor step towards `labels` (B, A): behaviour cloning, MSE in action space.

        Only the actor (CNN and MLP, or the MLP alone with `freeze_actor_encoder`) and its Adam
        state change; the critics, the targets and `total_updates` do not. Call
        `sync_targets` after the last one, so TD3 bootstraps from the cloned actor.
        """
        b = self.prepare(batch)
        with torch.profiler.record_function('td3.bc_forward'):
            pre_tanh = self._actor_logits(b)
            action = self.actor.squash(pre_tanh)
            target = self._to_device(labels, torch.float32).reshape(action.shape)
            bc = (action - target).square().mean()
            loss = bc
            if self.config.actor_pretanh_penalty > 0.0:
                loss = loss + self.config.actor_pretanh_penalty * pre_tanh.square().mean()
        norm = self._step(self.actor_optimizer, loss, [[p for _, p in self._actor_named]],
                          _grad_clip_value(self.config.actor_grad_clip), 'actor')
        metrics = {'bc_mse': bc.detach(), 'actor_pretanh_abs': pre_tanh.detach().abs().mean()}
        if norm is not None:
            metrics['actor_grad_norm'] = norm.detach()
        return metrics

    # ---- the trusted actor (trust_region_anchor: trusted) ----------------------------------

    def _trusted_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.trusted_actor is None:
            raise ValueError("the agent has no trusted actor (trust_region_anchor is not "
                             "'trusted')")
        return [(self.trusted_actor_cnn, self.actor_cnn), (self.trusted_actor, self.actor)]

    @torch.no_grad()
    def trust_actor(self):
        """Make the current actor the trusted one: the trust region's anchor from now on."""
        for trusted, actor in self._trusted_pairs():
            trusted.load_state_dict(actor.state_dict())

    @torch.no_grad()
    def revert_actor(self):
        """Put the actor and its target back on the trusted actor; forget its Adam moments.

        The moments point the way the actor went, which its episodes showed was harmful; kept,
        they would carry it the same way again. The critics are untouched: what they learnt
        from the harmful episodes is what should change the next move.
        """
        targets = {self.actor_cnn: self.target_actor_cnn, self.actor: self.target_actor}
        for trusted, actor in self._trusted_pairs():
            for module in (actor, targets[actor]):
                if module is not None:
                    module.load_state_dict(trusted.state_dict())
        self.actor_optimizer.state.clear()

    # ---- policy export and diagnostics ----------------------------------------------------

    def load_policy_state(self, state: dict[str, torch.Tensor]):
        """Start the actor (online, target, trusted) from `ActorPolicy` weights (cnn.*, actor.*).

        Fine-tuning a cloned policy: the critics keep their fresh initialisation.
        """
        for prefix, modules in (('cnn.', (self.actor_cnn, self.target_actor_cnn,
                                          self.trusted_actor_cnn)),
                                ('actor.', (self.actor, self.target_actor, self.trusted_actor))):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            for module in modules:
                if module is not None:
                    module.load_state_dict(part, strict=True)

    def policy_state(self) -> dict[str, torch.Tensor]:
        """Return the actor CNN + MLP weights with `ActorPolicy` names (cnn.*, actor.*)."""
        state = {f'cnn.{k}': _export(v) for k, v in self.actor_cnn.state_dict().items()}
        state.update({f'actor.{k}': _export(v) for k, v in self.actor.state_dict().items()})
        return state

    @torch.no_grad()
    def activation_health(self, batch) -> dict[str, float]:
        """Return dead-ReLU diagnostics of the CNNs and tanh saturation of the actor.

        Keys `<cnn>.conv<i>.<stat>` for cnn in (actor_cnn, critic_cnn), with stats
        negative_fraction (pre-activations < 0), dead_unit_fraction (channel x position
        units with pre-activation <= 0 for every sample) and dead_channel_fraction (channels
        with pre-activation <= 0 at every position of every sample); `actor.pretanh_abs_mean`
        and `actor.saturated_fraction` (action outputs with |pre-tanh| > 3, where tanh's
        slope is below 0.01 and the critic can barely move them).
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

    # ---- resume ---------------------------------------------------------------------------

    def _optimizers(self):
        return (('actor', self.actor_optimizer, self._actor_named),
                ('critic', self.critic_optimizer, self._critic_named))

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Return the full training state as flat named CPU tensors plus JSON metadata.

        Tensors: `<module>.<param>` for online and target nets, `optim.<actor|critic>.<param>.
        <exp_avg|exp_avg_sq>` for Adam moments, `rng.policy_noise` for the smoothing-noise
        generator. Metadata: format, total_updates, both configs and Adam step counts.
        No pickle: everything is a tensor or a JSON value.
        """
        tensors = {}
        for prefix, module in self.modules().items():
            for key, value in module.state_dict().items():
                tensors[f'{prefix}.{key}'] = _export(value)
        optim_meta = {}
        for opt_name, optimizer, named in self._optimizers():
            steps = {}
            for name, param in named:
                state = optimizer.state.get(param, {})
                for key, value in state.items():
                    if key == 'step':
                        steps[name] = int(value)
                    else:
                        tensors[f'optim.{opt_name}.{name}.{key}'] = _export(value)
            groups = [{k: v for k, v in group.items() if k != 'params'}
                      for group in optimizer.param_groups]
            optim_meta[opt_name] = {'steps': steps, 'param_groups': groups}
        tensors['rng.policy_noise'] = self._noise_gen.get_state().clone()
        metadata = {'format': STATE_FORMAT, 'total_updates': self.total_updates,
                    'td3_config': self.config.to_dict(),
                    'network_config': self.net_config.to_dict(),
                    'optimizers': optim_meta}
        return tensors, metadata

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], metadata: dict):
        """Restore a state from `state_tensors` exactly (weights, Adam, counters, noise RNG).

        Raises ValueError naming the problem when the format, network config or tensor names
        do not match this agent. The agent's own TD3Config (learning rates, ...) is kept.
        """
        if metadata.get('format') != STATE_FORMAT:
            raise ValueError(f'unknown training-state format {metadata.get("format")!r}, '
                             f'expected {STATE_FORMAT!r}')
        saved_net = metadata.get('network_config', {})
        diffs = config_differences(self.net_config.to_dict(), saved_net, ('agent', 'saved'))
        if diffs:
            raise ValueError('network config differs: ' + '; '.join(diffs))
        expected = set(self.state_tensors_names(metadata))
        missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
        if missing or unexpected:
            raise ValueError(f'training-state tensors do not match: missing '
                             f'{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}')
        for prefix, module in self.modules().items():
            start = f'{prefix}.'
            module.load_state_dict({k[len(start):]: v for k, v in tensors.items()
                                    if k.startswith(start)}, strict=True)
        for opt_name, optimizer, named in self._optimizers():
            steps = metadata['optimizers'][opt_name]['steps']
            state = {}
            for index, (name, param) in enumerate(named):
                if name not in steps:
                    continue
                entry = {'step': torch.tensor(float(steps[name]), dtype=torch.float32)}
                for key in ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq'):
                    saved = tensors.get(f'optim.{opt_name}.{name}.{key}')
                    if saved is not None:
                        # Match the parameter's layout (channels_last) and device.
                        entry[key] = torch.empty_like(param).copy_(saved)
                state[index] = entry
            current = optimizer.state_dict()
            optimizer.load_state_dict({'state': state, 'param_groups': current['param_groups']})
        self._noise_gen.set_state(tensors['rng.policy_noise'].to('cpu', torch.uint8))
        self.total_updates = int(metadata['total_updates'])

    def state_tensors_names(self, metadata: dict) -> list[str]:
        """Return the tensor names a state with `metadata` must contain for this agent."""
        names = [f'{prefix}.{key}' for prefix, module in self.modules().items()
                 for key in module.state_dict()]
        for opt_name, optimizer, named in self._optimizers():
            steps = metadata.get('optimizers', {}).get(opt_name, {}).get('steps', {})
            keys = ['exp_avg', 'exp_avg_sq']
            if optimizer.param_groups[0].get('amsgrad'):
                keys.append('max_exp_avg_sq')
            names += [f'optim.{opt_name}.{name}.{key}' for name, _ in named if name in steps
                      for key in keys]
        names.append('rng.policy_noise')
        return names


def metrics_to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Convert `update` metrics to Python floats (one host sync per value; do it when logging)."""
    return {k: float(v) for k, v in metrics.items()}

