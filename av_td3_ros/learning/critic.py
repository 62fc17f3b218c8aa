"""TD3's twin critic: two Q heads, `Q1` and `Q2`, over one state (clipped double Q).

The names follow av_td3_system (`Q1.fc1.weight`, ...), so its checkpoints map one to one.
"""
from __future__ import annotations

import torch
from torch import nn

from av_td3_ros.policy.networks import NetworkConfig, uniform_fan_in_


class Critic(nn.Module):
    """Estimate Q(state, action) with one MLP."""

    def __init__(self, config: NetworkConfig):
        """Build fc1 -> fc2 -> fc3 over the concatenated state and action."""
        super().__init__()
        self.fc1 = nn.Linear(config.state_dim + config.action_dim, config.hidden_dim)
        self.fc2 = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.fc3 = nn.Linear(config.hidden_dim, 1)
        for layer in (self.fc1, self.fc2, self.fc3):
            uniform_fan_in_(layer)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Return Q values of shape (B, 1)."""
        hidden = torch.relu(self.fc1(torch.cat([state, action], dim=1)))
        hidden = torch.relu(self.fc2(hidden))
        return self.fc3(hidden)


class TwinCritic(nn.Module):
    """Two independent Q heads over one state; TD3 bootstraps from their minimum."""

    def __init__(self, config: NetworkConfig):
        """Build the heads `Q1` and `Q2`."""
        super().__init__()
        self.Q1 = Critic(config)
        self.Q2 = Critic(config)

    def forward(self, state: torch.Tensor,
                action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return both heads' (B, 1) Q values."""
        return self.Q1(state, action), self.Q2(state, action)
