# Test if backend auto runs ONNX Runtime only where it agrees with torch, and torch otherwise.
import sys

import numpy as np
import pytest
import torch

from av_td3_ros.policy import inference_onnx
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.inference_onnx import (
    AUTO_TOLERANCE,
    OnnxRuntimeRunner,
    build_runner,
    probe_disagreement,
)
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

pytest.importorskip('onnxruntime')
CPU = torch.device('cpu')


def policy(seed=3):
    torch.manual_seed(seed)
    return ActorPolicy(NetworkConfig(feature_norm='layernorm_tanh')).eval()


def test_auto_takes_onnxruntime_when_it_agrees_with_torch_on_unseen_inputs():
    actor = policy()
    runner, used = build_runner(actor, CPU, 'auto')
    assert isinstance(runner, OnnxRuntimeRunner) and used.startswith('onnxruntime (auto: ')
    exact = PolicyRunner(actor, CPU)
    rng = np.random.default_rng(42)  # not the probes' seed
    for _ in range(10):
        frames = rng.uniform(-1, 1, (4, 84, 84)).astype(np.float32)
        kinematics = rng.normal(size=53).astype(np.float32)
        np.testing.assert_allclose(runner.act(frames, kinematics),
                                   exact.act(frames, kinematics), atol=AUTO_TOLERANCE, rtol=0)


def test_probe_disagreement_sees_a_runner_that_acts_differently():
    actor, other = policy(3), policy(4)
    assert probe_disagreement(actor, PolicyRunner(actor, CPU), PolicyRunner(actor, CPU)) == 0.0
    assert probe_disagreement(actor, PolicyRunner(actor, CPU), PolicyRunner(other, CPU)) > 1e-3


def test_auto_falls_back_to_torch_when_the_runtime_disagrees(monkeypatch):
    # A runtime whose actions drift: its export is of another policy's weights.
    drifting = policy(4)
    original = OnnxRuntimeRunner.__init__

    def export_other(self, _policy, threads=1):
        original(self, drifting, threads)

    monkeypatch.setattr(OnnxRuntimeRunner, '__init__', export_other)
    runner, used = build_runner(policy(3), CPU, 'auto')
    assert isinstance(runner, PolicyRunner)
    assert used.startswith('torch (auto: onnxruntime differs by ')


def test_auto_and_onnxruntime_fall_back_to_torch_without_the_runtime(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as if not installed
    for backend in ('auto', 'onnxruntime'):
        runner, used = build_runner(policy(), CPU, backend)
        assert isinstance(runner, PolicyRunner)
        assert used.startswith('torch (onnxruntime unavailable: ModuleNotFoundError')
    assert inference_onnx.BACKENDS[0] == 'auto'
