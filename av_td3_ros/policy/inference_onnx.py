"""Run the actor with ONNX Runtime on the CPU: the driver's optional faster inference backend.

Measured by `bench/inference_backends.py` (batch 1, one thread, one call every 50 ms as the
driver sees frames): ONNX Runtime's CPU kernels took about half the time of torch eager, with
actions within 1e-7 of it. torch stays the default because only it reproduces the training
code's float32 arithmetic bit for bit (`bag_eval` against a live driver, av_td3_system's
reference); `backend: onnxruntime` trades that for speed.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy
from av_td3_ros.validation import check_choice

BACKENDS = ('torch', 'onnxruntime')
"""Inference backends the driver accepts; torch is also the fallback."""


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


def build_runner(policy: ActorPolicy, device: torch.device, backend: str,
                 allow_tf32: bool = False) -> tuple[PolicyRunner | OnnxRuntimeRunner, str]:
    """Return a runner for `policy` and a description of the backend actually used.

    `onnxruntime` applies to the CPU only; on CUDA, or when ONNX Runtime (or the onnx package
    the exporter needs) cannot be imported or fails to build the session, the torch runner is
    returned and the description says why.
    """
    check_choice('backend', backend, BACKENDS)
    if backend == 'onnxruntime':
        if device.type != 'cpu':
            return (PolicyRunner(policy, device, allow_tf32),
                    f'torch (onnxruntime is CPU-only, not {device})')
        try:
            return OnnxRuntimeRunner(policy), 'onnxruntime'
        except Exception as error:  # missing packages or an export the runtime rejects
            reason = f'{type(error).__name__}: {error}'.splitlines()[0][:200]
            return (PolicyRunner(policy, device, allow_tf32),
                    f'torch (onnxruntime unavailable: {reason})')
    return PolicyRunner(policy, device, allow_tf32), 'torch'
