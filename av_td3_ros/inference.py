"""Run the actor for one observation at a time with no avoidable per-frame allocation."""
from __future__ import annotations

import numpy as np
import torch

from .networks import ActorPolicy


def resolve_device(name: str) -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda[:n]' to a torch device; raise ValueError if unavailable."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but CUDA is not available')
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f'device must be auto, cpu or cuda, got {name!r}')
    return device


class PolicyRunner:
    """Hold an ActorPolicy on a device with preallocated input tensors."""

    def __init__(self, policy: ActorPolicy, device: torch.device):
        """Move the policy to `device` and allocate its (1, ...) inputs once."""
        config = policy.config
        self.device = device
        self.policy = policy.to(device).eval()
        for parameter in self.policy.parameters():
            parameter.requires_grad_(False)
        shape = (1, config.frame_stack, config.image_size, config.image_size)
        pin = device.type == 'cuda'
        # Host staging buffers: on CPU they are the model inputs themselves.
        self._host_frames = torch.zeros(shape, pin_memory=pin)
        self._host_kinematics = torch.zeros((1, config.kinematic_dim), pin_memory=pin)
        self._frames = self._host_frames.to(device) if pin else self._host_frames
        self._kinematics = self._host_kinematics.to(device) if pin else self._host_kinematics

    def act(self, frames: np.ndarray, kinematics: np.ndarray) -> np.ndarray:
        """Return the deterministic action (action_dim,) for one stacked observation."""
        self._host_frames[0].numpy()[...] = frames
        self._host_kinematics[0].numpy()[...] = kinematics
        with torch.inference_mode():
            if self._frames is not self._host_frames:
                self._frames.copy_(self._host_frames, non_blocking=True)
                self._kinematics.copy_(self._host_kinematics, non_blocking=True)
            action = self.policy(self._frames, self._kinematics)
            return action[0].to('cpu').numpy()
