"""Run the actor with ONNX Runtime on the CPU, and choose the driver's inference backend.

Measured by `bench/inference_backends.py` (batch 1, one thread, one call every 50 ms as the
driver sees frames): ONNX Runtime's CPU kernels took about half the time of torch eager, with
actions within 1e-7 of it. Only torch reproduces the training code's float32 arithmetic bit
for bit (`bag_eval` against a live driver, av_td3_system's reference). `backend: auto` takes
ONNX Runtime where it is installed and agrees with torch on probe inputs, checked at every
load; `torch` keeps exact float32.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.validation import check_choice

BACKENDS = ('auto', 'torch', 'onnxruntime')
"""Inference backends the driver accepts; torch is also the fallback."""
AUTO_TOLERANCE = 1e-4
"""Largest difference from torch's float32 actions on the probe inputs that `auto` accepts."""
PROBES = 8
"""Probe observations `auto` compares the two backends on."""


class OnnxRuntimeRunner:
    """Hold an ActorPolicy exported to ONNX in an ONNX Runtime CPU session.

    Same `act` contract as `PolicyRunner`: one stacked observation in, the action out.
    """

    def __init__(self, policy: ActorPolicy, threads: int = 1):
        """Export `policy` (in memory, fixed batch-1 shapes) and open a CPU session."""
        import onnxruntime

        config = policy.config
        self._frames = np.zeros((1, config.frame_stack, config.image_size, config.image_size),
                                np.float32)
        self._kinematics = np.zeros((1, config.kinematic_dim), np.float32)
        model = io.BytesIO()
        with torch.inference_mode(), warnings.catch_warnings():
            # The TorchScript exporter (deprecated, still in the pinned torch): fixed shapes and
            # no onnxscript dependency. Its tracer warns about the encoder's input shape check,
            # which is constant for the fixed shapes exported here.
            warnings.simplefilter('ignore')
            torch.onnx.export(policy.cpu().eval(),
                              (torch.from_numpy(self._frames), torch.from_numpy(self._kinematics)),
                              model, dynamo=False, input_names=['frames', 'kinematics'],
                              output_names=['action'])
        options = onnxruntime.SessionOptions()
        # One frame at a time: extra threads would only add wake-up latency between frames.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(model.getvalue(), options,
                                                     providers=['CPUExecutionProvider'])
        self._inputs = {'frames': self._frames, 'kinematics': self._kinematics}

    def act(self, frames: np.ndarray, kinematics: np.ndarray) -> np.ndarray:
        """Return the deterministic action (action_dim,) for one stacked observation."""
        self._frames[0] = frames
        self._kinematics[0] = kinematics
        return self._session.run(None, self._inputs)[0][0]


def probe_disagreement(policy: ActorPolicy, first, second, count: int = PROBES) -> float:
    """Return the largest |action difference| of two runners on seeded probe observations.

    The probes span the inputs' ranges: frames uniform in [-1, 1] (zero-centred pixels),
    kinematics standard normal (the vector's scaled values are of order one).
    """
    config = policy.config
    rng = np.random.default_rng(0)
    largest = 0.0
    for _ in range(count):
        frames = rng.uniform(-1.0, 1.0, (config.frame_stack, config.image_size,
                                         config.image_size)).astype(np.float32)
        kinematics = rng.standard_normal(config.kinematic_dim).astype(np.float32)
        difference = np.abs(first.act(frames, kinematics) - second.act(frames, kinematics))
        largest = max(largest, float(difference.max()))
    return largest


def build_runner(policy: ActorPolicy, device: torch.device, backend: str,
                 allow_tf32: bool = False) -> tuple[PolicyRunner | OnnxRuntimeRunner, str]:
    """Return a runner for `policy` and a description of the backend actually used.

    `onnxruntime` applies to the CPU only; on CUDA, or when ONNX Runtime (or the onnx package
    the exporter needs) cannot be imported or fails to build the session, the torch runner is
    returned and the description says why. `auto` is onnxruntime where that works and its
    actions on the probe inputs are within AUTO_TOLERANCE of torch float32, else torch.
    """
    check_choice('backend', backend, BACKENDS)
    torch_runner = PolicyRunner(policy, device, allow_tf32)
    if backend == 'torch':
        return torch_runner, 'torch'
    if device.type != 'cpu':
        return torch_runner, f'torch (onnxruntime is CPU-only, not {device})'
    try:
        onnx_runner = OnnxRuntimeRunner(policy)
    except Exception as error:  # missing packages or an export the runtime rejects
        reason = f'{type(error).__name__}: {error}'.splitlines()[0][:200]
        return torch_runner, f'torch (onnxruntime unavailable: {reason})'
    if backend == 'onnxruntime':
        return onnx_runner, 'onnxruntime'
    disagreement = probe_disagreement(policy, torch_runner, onnx_runner)
    if disagreement <= AUTO_TOLERANCE:
        return onnx_runner, f'onnxruntime (auto: within {disagreement:.1e} of torch)'
    return torch_runner, (f'torch (auto: onnxruntime differs by {disagreement:.1e} > '
                          f'{AUTO_TOLERANCE:g})')
