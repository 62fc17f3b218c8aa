"""Tests of the imitation core: frame dataset, expert labels, episode cuts, BC updates."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.route_expert import RouteExpert, expert_actions
from av_td3_ros.learning.imitation import (
    AR1Noise,
    FrameDataset,
    ImitationConfig,
    ImitationTrainer,
    collect_episode,
    policy_spec,
)
from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig
from av_td3_ros.sim.evaluation import image_of, pose_of
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig


@pytest.fixture(scope='module')
def env():
    """One stand-in simulator for the module."""
    sim = SimEnv(SimEnvConfig())
    yield sim
    sim.close()


@pytest.mark.parametrize('stack_fill', ['zero', 'repeat_first'])
def test_dataset_stacks_equal_the_drivers_frame_stack(env, stack_fill):
    spec = replace(PolicySpec(), preprocessing=PreprocessConfig(stack_fill=stack_fill))
    dataset = FrameDataset(40, spec.preprocessing, spec.network.kinematic_dim)
    pipeline = DrivingPipeline(spec, None)
    seen = []
    from av_td3_ros.policy.preprocessing import gray_from_pixels, image_pixels
    for episode_seed in (5, 6):  # two episodes: stacks must not leak across them
        state = env.reset(seed=episode_seed)
        pipeline.reset_episode()
        dataset.start_episode()
        for _ in range(6):
            image = image_of(state)
            pipeline.step(image, pose_of(state), state.speed, env.waypoints)
            seen.append(pipeline.stack.frames.copy())
            dataset.add(gray_from_pixels(image_pixels(image), 'bgra8', 84),
                        pipeline.kinematics, np.zeros(2), False)
            state = env.step(0.0, 0.5, 0.0)
    stacks = dataset.stacks(np.arange(dataset.size))
    assert np.array_equal(stacks, np.stack(seen))


def test_dagger_labels_equal_the_expert_on_stored_kinematics(env):
    spec = policy_spec(ImitationConfig())
    dataset = FrameDataset(300, spec.preprocessing, spec.network.kinematic_dim)
    torch.manual_seed(0)
    student = PolicyRunner(ActorPolicy(spec.network), torch.device('cpu'))
    summary = collect_episode(env, 7, dataset, spec, RouteExpert(spec.features), 120, 60,
                              np.random.default_rng(0), student=student, beta=0.5)
    assert summary['frames'] == dataset.size == 120
    stored = dataset.kinematics[:dataset.size]
    assert np.array_equal(expert_actions(stored, spec.features), dataset.labels[:dataset.size])
    # labels computed later from half-precision storage (the replay buffer's) stay close
    relabelled = expert_actions(stored.astype(np.float16).astype(np.float32), spec.features)
    assert np.allclose(relabelled, dataset.labels[:dataset.size], atol=0.05)


def test_collection_cuts_an_episode_after_the_off_road_limit(env):
    class FullLeft(torch.nn.Module):
        """A student that steers hard left at full throttle: it leaves the road."""

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, frames, kinematics):
            return torch.tensor([[-1.0, 1.0]]).expand(frames.shape[0], 2)

    spec = policy_spec(ImitationConfig())
    dataset = FrameDataset(1000, spec.preprocessing, spec.network.kinematic_dim)
    student = PolicyRunner(FullLeft(spec.network), torch.device('cpu'))
    summary = collect_episode(env, 8, dataset, spec, RouteExpert(spec.features), 1000, 20,
                              np.random.default_rng(0), student=student, beta=0.0)
    assert summary['reason'] == 'cut'
    assert summary['frames'] < 1000
    assert dataset.off_road[:dataset.size].sum() >= 19  # the stored state lags one step


def test_ar1_noise_is_correlated_with_the_requested_scale():
    noise = AR1Noise(np.random.default_rng(0), 0.1, 0.9)
    samples = np.array([noise() for _ in range(20000)])
    assert samples.std() == pytest.approx(0.1, rel=0.1)
    lag1 = np.corrcoef(samples[1:, 0], samples[:-1, 0])[0, 1]
    assert lag1 == pytest.approx(0.9, abs=0.03)


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_bc_updates_fit_the_expert_labels_and_save_a_loadable_policy(env, tmp_path,
                                                                     precision):
    config = replace(ImitationConfig(), expert_frames=64, batch_size=32, dagger_betas=(),
                     precision=precision)
    trainer = ImitationTrainer(config, log=lambda text: None)
    trainer.collect(64, 31, student=False, beta=1.0, phase='test data')
    losses = [trainer.update() for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    # bf16 computes in bfloat16 but keeps float32 weights (channels_last in memory only)
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    path = tmp_path / 'policy.safetensors'
    trainer.save(path)
    # fp16 storage loads as float32 under the sim driver's spec (kinematic_inputs left at
    # its default 'all'): the checkpoint's mask comes along
    driver_spec = PolicySpec(network=NetworkConfig(feature_norm='layernorm_tanh'))
    policy, metadata = load_policy(path, driver_spec)
    assert next(policy.parameters()).dtype == torch.float32
    assert policy.config.kinematic_inputs == 'speed'
    assert 'imitation_config' in metadata
