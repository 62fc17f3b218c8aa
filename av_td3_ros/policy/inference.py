"""Run the actor for one observation at a time with no avoidable per-frame allocation."""
from __future__ import annotations

import numpy as np
import torch

from av_td3_ros.policy.networks import ActorPolicy


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


def set_float32_precision(allow_tf32: bool):
    """Choose exact float32 (False) or TensorFloat-32 (True) for CUDA matmuls and convolutions.

    PyTorch's defaults differ per backend: matmuls are exact float32 but cuDNN convolutions
    may use TF32 (10-bit mantissa) on Ampere and later GPUs, which moves the actor's actions
    by ~1e-4 against CPU float32, so a GPU driver and a CPU `bag_eval` would disagree.
    The flags are process-wide; the legacy `allow_tf32` switches are used because they set
    every sub-backend consistently (mixing them with the newer `fp32_precision` ones makes
    later reads raise). Without a GPU the flags are set and have no effect.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)


def float32_precision() -> dict[str, bool]:
    """Return whether TF32 is allowed for CUDA matmuls and cuDNN (for diagnostics and tests)."""
    return {'matmul_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
            'cudnn_tf32': bool(torch.backends.cudnn.allow_tf32)}


class PolicyRunner:
    """Hold an ActorPolicy on a device with preallocated input tensors."""

    def __init__(self, policy: ActorPolicy, device: torch.device, allow_tf32: bool = False):
        """Move the policy to `device` and allocate its (1, ...) inputs once.

        `allow_tf32` False (the default) makes CUDA inference exact float32, like the CPU;
        see `set_float32_precision`.
        """
        set_float32_precision(allow_tf32)
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
