"""Networks of the driving policy: the NatureCNN encoder and the actor.

Module and parameter names follow av_td3_system (`conv1.weight`, `fc.bias`, `fc1.weight`,
...) so its checkpoints map onto these modules one to one. The critic, which only learning
needs, is `learning/critic.py`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from av_td3_ros.validation import check_at_least, check_choice

ACTIVATIONS = ('leaky_relu', 'relu', 'prelu')
FEATURE_NORMS = ('none', 'layernorm', 'layernorm_tanh')
KINEMATIC_INPUTS = ('all', 'speed')


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the encoder, actor and critics (stored in every checkpoint)."""

    frame_stack: int = 4
    """Number of stacked 84x84 frames fed to the CNN (input channels)."""
    image_size: int = 84
    """Side of the square preprocessed frame."""
    features_dim: int = 512
    """Width of the CNN's `fc` output."""
    activation: str = 'leaky_relu'
    """Activation after each conv: leaky_relu (the seed's fix for [-1, 1] inputs), relu, prelu."""
    negative_slope: float = 0.01
    """LeakyReLU slope for negative inputs (PReLU initial slope)."""
    feature_norm: str = 'none'
    """After `fc`: none (the seed's NatureCNN), layernorm, or layernorm_tanh (bounded
    features; keeps an actor that trains its own encoder from blowing its features up and
    saturating tanh, which we measured in CPU training runs of the stand-in)."""
    kinematic_dim: int = 53
    """Length of the kinematic vector: speed, lateral dev., heading err., 2 x N waypoints."""
    kinematic_inputs: str = 'all'
    """What the actor sees of the kinematic vector: all (the route profile) or speed (the
    camera profile: every other entry is zeroed inside the actor, so only the camera can
    tell it where the road is). The vector keeps its length either way, so drivers, replay
    buffers and critics (which always see all of it) need no change."""
    hidden_dim: int = 256
    """Width of the actor's and critics' hidden layers."""
    action_dim: int = 2
    """Actions: steer, throttle/brake."""
    max_action: float = 1.0
    """Actions are tanh outputs scaled by this."""

    def __post_init__(self):
        """Validate values so a bad config fails when built, naming the field."""
        check_choice('activation', self.activation, ACTIVATIONS)
        check_choice('feature_norm', self.feature_norm, FEATURE_NORMS)
        check_choice('kinematic_inputs', self.kinematic_inputs, KINEMATIC_INPUTS)
        # Three valid convolutions (8/4, 4/2, 3/1) need at least 36 pixels.
        check_at_least(self, 36, 'image_size')
        check_at_least(self, 1, 'frame_stack', 'features_dim', 'kinematic_dim', 'hidden_dim',
                       'action_dim')

    @property
    def state_dim(self) -> int:
        """Return the actor input width: CNN features plus kinematic vector."""
        return self.features_dim + self.kinematic_dim

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoint metadata)."""
        return asdict(self)


def make_activation(config: NetworkConfig, channels: int = 1) -> nn.Module:
    """Build the conv activation named by `config` (PReLU learns one slope per channel)."""
    if config.activation == 'leaky_relu':
        return nn.LeakyReLU(negative_slope=config.negative_slope)
    if config.activation == 'prelu':
        return nn.PReLU(num_parameters=channels, init=config.negative_slope)
    return nn.ReLU()


class NatureCNN(nn.Module):
    """Encode a (B, frames, 84, 84) stack in [-1, 1] to (B, 512) features.

    Three convolutions (32x8x8/4, 64x4x4/2, 64x3x3/1) each followed by the configured
    activation (LeakyReLU(0.01) by default: plain ReLU would zero every negative input of the
    zero-centred frames), flattened and projected by `fc` with no activation after it.
    """

    def __init__(self, config: NetworkConfig):
        """Build the layers and size `fc` from a dummy forward pass."""
        super().__init__()
        self.config = config
        channels = config.frame_stack
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=8, stride=4)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1)
        if config.activation == 'prelu':
            # PReLU has parameters, so each conv gets its own.
            self.act1 = make_activation(config, 32)
            self.act2 = make_activation(config, 64)
            self.act3 = make_activation(config, 64)
        else:
            self.activation = make_activation(config)
            self.act1 = self.act2 = self.act3 = self.activation
        with torch.inference_mode():
            dummy = torch.zeros(1, channels, config.image_size, config.image_size)
            self.flat_size = int(self.conv_stack(dummy).shape[1])
        self.fc = nn.Linear(self.flat_size, config.features_dim)
        if config.feature_norm != 'none':
            self.feature_norm = nn.LayerNorm(config.features_dim)
        self._init_weights()

    def _init_weights(self):
        for layer in (self.conv1, self.conv2, self.conv3, self.fc):
            nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='leaky_relu',
                                    a=self.config.negative_slope)
            nn.init.zeros_(layer.bias)

    def pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return each conv's output before its activation (for dead-unit diagnostics)."""
        self.check_input(x)
        outputs = []
        out = x
        for conv, act in ((self.conv1, self.act1), (self.conv2, self.act2),
                          (self.conv3, self.act3)):
            pre = conv(out)
            outputs.append(pre)
            out = act(pre)
        return outputs

    def conv_stack(self, x: torch.Tensor) -> torch.Tensor:
        """Run the three conv layers and flatten."""
        out = self.act1(self.conv1(x))
        out = self.act2(self.conv2(out))
        out = self.act3(self.conv3(out))
        return out.flatten(1)

    def check_input(self, x: torch.Tensor):
        """Raise ValueError unless `x` is (B, frames, size, size)."""
        expected = (self.config.frame_stack, self.config.image_size, self.config.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f'NatureCNN expects input (B, {expected[0]}, {expected[1]}, '
                             f'{expected[2]}), got {tuple(x.shape)}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode frames `x` (B, frames, size, size) to (B, features_dim)."""
        self.check_input(x)
        features = self.fc(self.conv_stack(x))
        if self.config.feature_norm == 'none':
            return features
        features = self.feature_norm(features)
        return torch.tanh(features) if self.config.feature_norm == 'layernorm_tanh' \
            else features


def uniform_fan_in_(layer: nn.Linear):
    """Initialise `layer` uniformly in +-1/sqrt(fan_in), weights and bias (PyTorch's rule)."""
    bound = 1.0 / math.sqrt(layer.weight.shape[1])
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.uniform_(layer.bias, -bound, bound)


class Actor(nn.Module):
    """Map [CNN features, kinematic vector] to actions in [-max_action, max_action]."""

    def __init__(self, config: NetworkConfig):
        """Build fc1 -> fc2 -> fc3 with ReLU hidden layers and a tanh output."""
        super().__init__()
        self.fc1 = nn.Linear(config.state_dim, config.hidden_dim)
        self.fc2 = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.fc3 = nn.Linear(config.hidden_dim, config.action_dim)
        # Not persistent: max_action lives in the config stored with every checkpoint.
        self.register_buffer('max_action', torch.tensor(float(config.max_action)),
                             persistent=False)
        # Likewise the input mask of the camera profile (None: the actor sees everything).
        mask = None
        if config.kinematic_inputs == 'speed':
            mask = torch.zeros(config.state_dim)
            mask[:config.features_dim + 1] = 1.0  # CNN features and the speed term
        self.register_buffer('input_mask', mask, persistent=False)
        for layer in (self.fc1, self.fc2, self.fc3):
            uniform_fan_in_(layer)

    def pre_tanh(self, state: torch.Tensor) -> torch.Tensor:
        """Return fc3's output before tanh (B, action_dim): the actions' unbounded logits."""
        if self.input_mask is not None:
            state = state * self.input_mask
        hidden = torch.relu(self.fc1(state))
        hidden = torch.relu(self.fc2(hidden))
        return self.fc3(hidden)

    def squash(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        """Map `pre_tanh` logits to actions in [-max_action, max_action]."""
        return torch.tanh(pre_tanh) * self.max_action

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Return tanh-squashed actions for `state` (B, state_dim)."""
        return self.squash(self.pre_tanh(state))


class ActorPolicy(nn.Module):
    """Actor with its own encoder: frames + kinematics -> action (what the driver runs)."""

    def __init__(self, config: NetworkConfig):
        """Build the encoder `cnn` and the MLP `actor`."""
        super().__init__()
        self.config = config
        self.cnn = NatureCNN(config)
        self.actor = Actor(config)

    def forward(self, frames: torch.Tensor, kinematics: torch.Tensor) -> torch.Tensor:
        """Return actions (B, action_dim) for frames (B, F, S, S) and kinematics (B, K)."""
        return self.actor(torch.cat([self.cnn(frames), kinematics], dim=1))
