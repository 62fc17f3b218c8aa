# Test if the ONNX Runtime backend acts like the torch runner and falls back to torch cleanly.
import sys

import numpy as np
import pytest
import torch

from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.inference_onnx import OnnxRuntimeRunner, build_runner
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

pytest.importorskip('onnxruntime')


def random_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    return ActorPolicy(NetworkConfig(**overrides)).eval()


def observations(config, count, seed=1):
    rng = np.random.default_rng(seed)
    shape = (config.frame_stack, config.image_size, config.image_size)
    return [(rng.uniform(-1, 1, shape).astype(np.float32),
             rng.normal(size=config.kinematic_dim).astype(np.float32)) for _ in range(count)]


@pytest.mark.parametrize('overrides', [{}, {'feature_norm': 'layernorm_tanh'},
                                       {'activation': 'prelu', 'kinematic_dim': 5}])
def test_onnxruntime_actions_match_torch_within_1e4(overrides):
    policy = random_policy(**overrides)
    torch_runner = PolicyRunner(policy, torch.device('cpu'))
    ort_runner, used = build_runner(policy, torch.device('cpu'), 'onnxruntime')
    assert used == 'onnxruntime' and isinstance(ort_runner, OnnxRuntimeRunner)
    actions = []
    for frames, kinematics in observations(policy.config, 20):
        expected = torch_runner.act(frames, kinematics)
        got = ort_runner.act(frames, kinematics)
        assert got.shape == expected.shape == (2,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        actions.append(got)
    assert np.ptp(np.array(actions), axis=0).min() > 0  # inputs reach the output


def test_torch_backend_and_fallbacks(monkeypatch):
    policy = random_policy()
    runner, used = build_runner(policy, torch.device('cpu'), 'torch')
    assert used == 'torch' and isinstance(runner, PolicyRunner)
    with pytest.raises(ValueError, match='backend'):
        build_runner(policy, torch.device('cpu'), 'tensorrt')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as if not installed
    runner, used = build_runner(policy, torch.device('cpu'), 'onnxruntime')
    assert isinstance(runner, PolicyRunner)
    assert used.startswith('torch (onnxruntime unavailable: ') and 'onnxruntime' in used[30:]
