"""Which precision an update runs in: bfloat16 where the hardware computes it natively."""
from __future__ import annotations

import torch

from av_td3_ros.validation import check_choice

PRECISIONS = ('fp32', 'bf16', 'auto')


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
    check_choice('precision', name, PRECISIONS)
    if name == 'auto':
        return 'bf16' if native_bf16(device) else 'fp32'
    return name


def autocast(device: torch.device, precision: str):
    """Return the context that runs network passes in `precision` ('bf16' or 'fp32').

    Weights stay float32; callers cast outputs to float32 before any loss arithmetic.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')
