# Test if the TD3 learner keeps textbook TD3 semantics, resumes exactly and learns a toy task.
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from av_td3_ros.learning.device_batch import DeviceBatch, frames_to_float
from av_td3_ros.learning.precision import native_bf16, resolve_precision
from av_td3_ros.learning.replay_buffer import Batch
from av_td3_ros.learning.td3 import TD3, TD3Config
from av_td3_ros.policy.inference import resolve_device
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

SMALL = NetworkConfig(image_size=36, features_dim=32, kinematic_dim=3, hidden_dim=32)


@pytest.fixture(autouse=True)
def one_thread():
    # Test-sized tensors gain nothing from intra-op threads, and on a busy 2-core CI box two
    # OpenMP threads waiting on each other can make each update 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def transition_fields(batch: Batch) -> dict:
    return {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)
            if getattr(batch, field.name) is not None}


def make_batch(size=8, net=SMALL, seed=0, terminated=None, truncated=None) -> Batch:
    rng = np.random.default_rng(seed)
    frames = (size, net.frame_stack, net.image_size, net.image_size)
    zeros = np.zeros(size, np.float32)
    return Batch(
        obs_frames=rng.integers(0, 256, frames, dtype=np.uint8),
        obs_vec=rng.normal(size=(size, net.kinematic_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (size, net.action_dim)).astype(np.float32),
        rewards=rng.normal(size=size).astype(np.float32),
        next_frames=rng.integers(0, 256, frames, dtype=np.uint8),
        next_vec=rng.normal(size=(size, net.kinematic_dim)).astype(np.float32),
        terminated=zeros if terminated is None else np.asarray(terminated, np.float32),
        truncated=zeros if truncated is None else np.asarray(truncated, np.float32),
    )


def make_agent(net=SMALL, **overrides) -> TD3:
    return TD3(net, TD3Config(device='cpu', seed=overrides.pop('seed', 0), **overrides))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match='tau'):
        TD3Config(tau=0.0)
    with pytest.raises(ValueError, match='frame_scale'):
        TD3Config(frame_scale='imagenet')
    with pytest.raises(ValueError, match='policy_frequency'):
        TD3Config(policy_frequency=0)
    with pytest.raises(ValueError, match='actor_pretanh_penalty'):
        TD3Config(actor_pretanh_penalty=-1e-3)
    with pytest.raises(ValueError, match='precision'):
        TD3Config(precision='fp8')
    assert TD3Config.from_dict(TD3Config(gamma=0.9).to_dict() | {'future_key': 1}).gamma == 0.9


def test_resolve_device_auto():
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    assert resolve_device('cpu').type == 'cpu'


def test_frame_scaling_matches_preprocessing_bit_for_bit():
    preprocessing = pytest.importorskip('av_td3_ros.policy.preprocessing')
    values = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8)
    for scale in ('zero_centered', 'unit'):
        for channels_last in (False, True):
            ours = frames_to_float(torch.from_numpy(values), scale, channels_last)
            ref = preprocessing.scale_frames(values, scale)
            assert ours.dtype == torch.float32
            assert np.array_equal(ours.numpy(), ref), scale
    zero_centered = frames_to_float(torch.from_numpy(values)).numpy()
    assert zero_centered.min() == -1.0 and zero_centered.max() == 1.0
    np.testing.assert_allclose(zero_centered, (values / 255.0 - 0.5) / 0.5, atol=1e-7)
    with pytest.raises(TypeError, match='uint8'):
        frames_to_float(torch.zeros(1, 4, 8, 8))


def test_prepare_rejects_float_frames():
    batch = make_batch()
    batch = dataclasses.replace(batch, obs_frames=batch.obs_frames.astype(np.float32))
    with pytest.raises(TypeError, match='uint8'):
        make_agent().prepare(batch)


def test_targets_start_equal_and_are_frozen_copies():
    agent = make_agent()
    for online, target in ((agent.actor, agent.target_actor),
                           (agent.critic, agent.target_critic),
                           (agent.actor_cnn, agent.target_actor_cnn),
                           (agent.critic_cnn, agent.target_critic_cnn)):
        assert same(snapshot(online), snapshot(target))
        assert all(not p.requires_grad for p in target.parameters())
        assert all(p.data_ptr() != q.data_ptr()
                   for p, q in zip(online.parameters(), target.parameters(), strict=True))
    # Actor and critic own separate encoders.
    assert agent.actor_cnn is not agent.critic_cnn
    assert not same(snapshot(agent.actor_cnn), snapshot(agent.critic_cnn))


def test_policy_delay_and_polyak_formula():
    tau = 0.3  # large, so a wrong blend is far outside float tolerance
    agent = make_agent(tau=tau)
    batch = make_batch()
    modules = agent.modules()
    online_names = ('actor_cnn', 'actor', 'critic_cnn', 'critic')
    before = {name: snapshot(module) for name, module in modules.items()}

    metrics = agent.update(batch)
    assert 'actor_loss' not in metrics and 'critic_loss' in metrics
    assert same(snapshot(agent.actor), before['actor'])
    assert same(snapshot(agent.actor_cnn), before['actor_cnn'])
    assert not same(snapshot(agent.critic), before['critic'])
    assert not same(snapshot(agent.critic_cnn), before['critic_cnn'])
    for name in modules:
        if name.startswith('target_'):
            assert same(snapshot(modules[name]), before[name]), name

    targets_before = {name: snapshot(modules[name]) for name in modules
                      if name.startswith('target_')}
    metrics = agent.update(batch)
    assert 'actor_loss' in metrics and 'actor_grad_norm' in metrics
    assert not same(snapshot(agent.actor), before['actor'])
    assert not same(snapshot(agent.actor_cnn), before['actor_cnn'])
    for name in online_names:
        online = snapshot(modules[name])
        target_old = targets_before[f'target_{name}']
        target_new = snapshot(modules[f'target_{name}'])
        for key, value in online.items():
            expected = (1 - tau) * target_old[key] + tau * value
            torch.testing.assert_close(target_new[key], expected, rtol=0, atol=1e-6)
            assert not torch.equal(target_new[key], target_old[key]) or torch.equal(
                value, target_old[key])
    assert agent.total_updates == 2


def test_actor_and_critic_losses_do_not_leak_gradients():
    agent = make_agent()
    batch = agent.prepare(make_batch())
    critic_params = list(agent.critic.parameters()) + list(agent.critic_cnn.parameters())
    actor_params = list(agent.actor.parameters()) + list(agent.actor_cnn.parameters())

    loss, _ = agent.actor_loss(batch)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in critic_params)
    assert all(p.grad is not None for p in actor_params)
    assert any(p.grad.any() for p in agent.actor_cnn.parameters())
    assert all(p.requires_grad for p in critic_params)  # frozen only while building the graph

    for param in actor_params + critic_params:
        param.grad = None
    loss, _ = agent.critic_loss(batch)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in actor_params)
    assert all(p.grad is not None for p in critic_params)
    assert any(p.grad.any() for p in agent.critic_cnn.parameters())
    targets = [agent.target_actor, agent.target_critic, agent.target_actor_cnn,
               agent.target_critic_cnn]
    assert all(p.grad is None for module in targets for p in module.parameters())


def test_pretanh_penalty_is_added_to_the_actor_loss():
    batch = make_batch()
    plain = make_agent()
    loss, metrics = plain.actor_loss(batch)
    assert torch.equal(loss.detach(), metrics['actor_loss'])
    assert torch.equal(metrics['actor_loss'], -metrics['actor_q'])

    weight = 0.25
    penalised = make_agent(actor_pretanh_penalty=weight)  # same seed: same networks
    loss, metrics = penalised.actor_loss(batch)
    b = penalised.prepare(batch)
    with torch.no_grad():
        pre = penalised.actor.pre_tanh(torch.cat([penalised.actor_cnn(b.obs), b.obs_vec], 1))
    assert torch.allclose(metrics['actor_pretanh_abs'], pre.abs().mean())
    assert torch.allclose(loss, -metrics['actor_q'] + weight * pre.square().mean())
    assert torch.equal(metrics['actor_q'], plain.actor_loss(batch)[1]['actor_q'])


def _saturate(agent, logit=12.0):
    # tanh's slope at 12 is ~1.5e-10, far below Adam's epsilon: the state the actor reaches
    # when Adam follows a young critic's one-sided action gradient for a few hundred steps.
    with torch.no_grad():
        agent.actor.fc3.weight.zero_()
        agent.actor.fc3.bias.fill_(logit)


@pytest.mark.parametrize('weight', [0.0, 0.01])
def test_pretanh_penalty_brings_a_saturated_actor_back(weight):
    batch = make_batch(size=32)
    agent = make_agent(actor_pretanh_penalty=weight, policy_frequency=1)
    _saturate(agent)
    start = float(agent.actor_loss(batch)[1]['actor_pretanh_abs'])
    for _ in range(40):
        agent.update(batch)
    end = float(agent.actor_loss(batch)[1]['actor_pretanh_abs'])
    if weight == 0.0:
        # Plain TD3 cannot leave the tail: its gradient is below Adam's epsilon.
        assert end > start - 0.1, (start, end)
        assert agent.activation_health(batch)['actor.saturated_fraction'] == 1.0
    else:
        assert end < start - 0.5, (start, end)


def test_truncation_bootstraps_and_termination_does_not():
    agent = make_agent(policy_noise=0.0, gamma=0.9)
    base = make_batch(size=1)
    rows = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (terminated, truncated)
    batch = Batch(**{name: np.repeat(np.asarray(value), len(rows), axis=0)
                     for name, value in transition_fields(base).items()})
    batch = dataclasses.replace(batch, rewards=np.array([1.0, 1.0, 1.0, 1.0], np.float32),
                                terminated=np.array([r[0] for r in rows], np.float32),
                                truncated=np.array([r[1] for r in rows], np.float32))
    y = agent.td_target(batch)

    b = agent.prepare(batch)
    with torch.no_grad():
        next_action = agent.target_actor(torch.cat(
            [agent.target_actor_cnn(b.next_obs), b.next_vec], 1)).clamp(-1, 1)
        q1, q2 = agent.target_critic(
            torch.cat([agent.target_critic_cnn(b.next_obs), b.next_vec], 1), next_action)
    bootstrap = 1.0 + 0.9 * torch.minimum(q1, q2)[0, 0]
    torch.testing.assert_close(y[0], bootstrap)
    torch.testing.assert_close(y[1], bootstrap)  # truncated: still bootstraps
    assert y[2] == 1.0 and y[3] == 1.0  # terminated: reward only
    assert not torch.isclose(bootstrap, torch.tensor(1.0))


def test_target_without_encoder_targets_uses_online_cnns():
    agent = make_agent(policy_noise=0.0, target_encoders=False)
    assert agent.target_actor_cnn is None and 'target_actor_cnn' not in agent.modules()
    batch = make_batch()
    b = agent.prepare(batch)
    with torch.no_grad():
        action = agent.target_actor(torch.cat([agent.actor_cnn(b.next_obs), b.next_vec], 1))
        q1, q2 = agent.target_critic(torch.cat([agent.critic_cnn(b.next_obs), b.next_vec], 1),
                                     action)
    expected = b.rewards + agent.config.gamma * torch.minimum(q1, q2).squeeze(1)
    torch.testing.assert_close(agent.td_target(b), expected)
    agent.update(batch)
    agent.update(batch)  # polyak over the MLP targets only must work too


def test_target_policy_noise_is_clipped():
    agent = make_agent(policy_noise=1e3, noise_clip=0.3)
    b = agent.prepare(make_batch(size=64))
    with torch.no_grad():
        clean = agent.target_actor(torch.cat([agent.target_actor_cnn(b.next_obs),
                                              b.next_vec], 1))
    noisy = agent.target_actions(b)
    assert noisy.abs().max() <= 1.0
    # With huge noise every component is pushed to clean +- clip (then to the action bound).
    shifted = (noisy - clean).abs()
    assert shifted.max() <= 0.3 + 1e-6
    at_bound = torch.isclose(noisy, (clean + 0.3).clamp(-1, 1)) | torch.isclose(
        noisy, (clean - 0.3).clamp(-1, 1))
    assert at_bound.float().mean() > 0.95
    assert (noisy > clean).any() and (noisy < clean).any()


def test_policy_state_loads_into_actor_policy():
    agent = make_agent()
    batch = make_batch()
    agent.update(batch)
    agent.update(batch)
    policy = ActorPolicy(SMALL)
    policy.load_state_dict(agent.policy_state(), strict=True)
    assert 'cnn.conv1.weight' in agent.policy_state()
    assert 'actor.fc1.weight' in agent.policy_state()
    b = agent.prepare(batch)
    with torch.no_grad():
        expected = agent.actor(torch.cat([agent.actor_cnn(b.obs), b.obs_vec], 1))
        got = policy(b.obs.contiguous(), b.obs_vec)
    torch.testing.assert_close(got, expected)


def all_state(agent):
    return agent.state_tensors()[0]


@pytest.mark.parametrize('impl', ['fused', 'foreach'])
def test_resume_is_bit_for_bit(impl):
    batches = [make_batch(seed=s) for s in range(6)]
    agent = make_agent(optimizer_impl=impl, seed=1)
    for batch in batches[:3]:
        agent.update(batch)
    tensors, metadata = agent.state_tensors()
    assert all(isinstance(v, torch.Tensor) and v.device.type == 'cpu' and v.is_contiguous()
               for v in tensors.values())
    metadata = json.loads(json.dumps(metadata))  # must survive JSON
    assert metadata['total_updates'] == 3
    assert any(k.startswith('optim.critic.critic_cnn.conv1.weight.exp_avg') for k in tensors)

    fresh = make_agent(optimizer_impl=impl, seed=2)
    assert not same(all_state(fresh), tensors)
    fresh.load_state_tensors(tensors, metadata)
    assert same(all_state(fresh), tensors)
    assert fresh.total_updates == 3
    for batch in batches[3:]:  # covers a critic-only and an actor update
        m1, m2 = agent.update(batch), fresh.update(batch)
        assert m1.keys() == m2.keys()
        assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert same(all_state(agent), all_state(fresh))


def test_load_rejects_mismatched_state():
    agent = make_agent()
    tensors, metadata = agent.state_tensors()
    other = TD3(dataclasses.replace(SMALL, hidden_dim=16), TD3Config(device='cpu'))
    with pytest.raises(ValueError, match='hidden_dim'):
        other.load_state_tensors(tensors, metadata)
    no_targets = make_agent(target_encoders=False)
    with pytest.raises(ValueError, match='unexpected'):
        no_targets.load_state_tensors(tensors, metadata)
    with pytest.raises(ValueError, match='format'):
        agent.load_state_tensors(tensors, {**metadata, 'format': 'pickle'})
    without_critic = {k: v for k, v in tensors.items() if not k.startswith('critic.Q2.')}
    with pytest.raises(ValueError, match='missing.*critic.Q2'):
        agent.load_state_tensors(without_critic, metadata)


def test_activation_health_ranges_and_relu_vs_leaky():
    batch = make_batch(size=16)
    for activation in ('leaky_relu', 'relu'):
        agent = make_agent(dataclasses.replace(SMALL, activation=activation))
        health = agent.activation_health(batch)
        assert len(health) == 2 * 3 * 3 + 2
        assert all(0.0 <= v <= 1.0 for k, v in health.items() if k != 'actor.pretanh_abs_mean')
        assert health['actor.saturated_fraction'] == 0.0  # fresh actor: small logits
        assert 0.2 < health['actor_cnn.conv1.negative_fraction'] < 0.8

    # Kill conv1 of the actor CNN: with ReLU every later unit sees only its bias (0), so
    # conv2 is dead too; LeakyReLU still passes a signal and keeps conv2 units alive.
    dead_conv2 = {}
    for activation in ('leaky_relu', 'relu'):
        agent = make_agent(dataclasses.replace(SMALL, activation=activation))
        with torch.no_grad():
            agent.actor_cnn.conv1.bias.fill_(-1e3)
        health = agent.activation_health(batch)
        assert health['actor_cnn.conv1.negative_fraction'] == 1.0
        assert health['actor_cnn.conv1.dead_unit_fraction'] == 1.0
        assert health['actor_cnn.conv1.dead_channel_fraction'] == 1.0
        assert health['critic_cnn.conv1.dead_channel_fraction'] < 1.0
        dead_conv2[activation] = health['actor_cnn.conv2.dead_unit_fraction']
    assert dead_conv2['relu'] == 1.0
    assert dead_conv2['leaky_relu'] < 0.9


def test_update_accepts_tensors_and_bool_flags():
    batch = make_batch()
    as_tensors = Batch(**{name: torch.as_tensor(np.asarray(value))
                          for name, value in transition_fields(batch).items()})
    as_tensors = dataclasses.replace(as_tensors,
                                     terminated=torch.zeros(8, dtype=torch.bool),
                                     truncated=torch.ones(8, dtype=torch.bool))
    agent = make_agent()
    prepared = agent.prepare(as_tensors)
    assert isinstance(prepared, DeviceBatch)
    assert prepared.terminated.dtype == torch.float32 and prepared.obs.dtype == torch.float32
    metrics = agent.update(as_tensors)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_update_on_cuda():
    agent = make_agent(device='cuda')
    metrics = agent.update(make_batch())
    assert metrics['critic_loss'].device.type == 'cuda'


def bandit_batch(rng, size, net, actions=None) -> tuple[Batch, np.ndarray]:
    """Return a one-step bandit: bright frames reward +a[0], dark frames reward -a[0]."""
    sign = rng.choice([-1.0, 1.0], size=size).astype(np.float32)
    level = np.where(sign > 0, 200, 55)[:, None, None, None]
    shape = (size, net.frame_stack, net.image_size, net.image_size)
    frames = np.clip(level + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    if actions is None:
        actions = rng.uniform(-1, 1, (size, net.action_dim)).astype(np.float32)
    vec = np.zeros((size, net.kinematic_dim), np.float32)
    ones = np.ones(size, np.float32)
    batch = Batch(frames, vec, actions, actions[:, 0] * sign, frames, vec, ones, 0 * ones)
    return batch, sign


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_learns_a_tiny_image_bandit(precision):
    net = NetworkConfig(frame_stack=1, image_size=36, features_dim=32, kinematic_dim=1,
                        hidden_dim=32)
    agent = TD3(net, TD3Config(device='cpu', seed=0, actor_lr=2e-3, critic_lr=2e-3,
                               precision=precision))
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(120):
        batch, _ = bandit_batch(rng, 32, net)
        losses.append(float(agent.update(batch)['critic_loss']))
    assert np.mean(losses[-20:]) < 0.25 * np.mean(losses[:20])

    test_batch, sign = bandit_batch(np.random.default_rng(1), 512, net)
    b = agent.prepare(test_batch)
    with torch.no_grad():
        actions = agent.actor(torch.cat([agent.actor_cnn(b.obs), b.obs_vec], 1)).numpy()
    learned = float(np.mean(actions[:, 0] * sign))
    random_return = float(np.mean(test_batch.actions[:, 0] * sign))  # uniform actions
    assert learned > random_return + 0.5, (learned, random_return)


def test_channels_last_frames_equal_plain_frames():
    frames = torch.from_numpy(make_batch(size=3).obs_frames)
    plain = frames_to_float(frames, channels_last=False)
    fast = frames_to_float(frames, channels_last=True)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert fast.shape == plain.shape and torch.equal(fast, plain)


def test_padding_frames_before_the_episode_start_become_zero_like_the_driver():
    # Test that frames flagged missing by the buffer are 0.0 after scaling, not -1.0.
    from av_td3_ros.policy.preprocessing import FrameStack, PreprocessConfig, scale_frames
    agent = TD3(NetworkConfig(), TD3Config(device='cpu', seed=0))
    first = np.full((84, 84), 200, np.uint8)
    frames = np.zeros((1, 4, 84, 84), np.uint8)
    frames[0, 3] = first
    missing = np.array([[True, True, True, False]])
    batch = SimpleNamespace(obs_frames=frames, next_frames=frames, obs_missing=missing,
                            next_missing=missing, obs_vec=np.zeros((1, 53), np.float32),
                            actions=np.zeros((1, 2), np.float32),
                            rewards=np.zeros(1, np.float32), next_vec=np.zeros((1, 53),
                                                                              np.float32),
                            terminated=np.zeros(1, np.float32),
                            truncated=np.zeros(1, np.float32))
    prepared = agent.prepare(batch)
    stack = FrameStack(PreprocessConfig())
    stack.push(scale_frames(first))
    np.testing.assert_array_equal(prepared.obs[0].contiguous().numpy(), stack.frames)


def test_update_and_resume_with_a_layernorm_tanh_encoder():
    # Test that the optional feature normalisation trains, has targets and resumes.
    net = NetworkConfig(feature_norm='layernorm_tanh', image_size=36)
    agent = TD3(net, TD3Config(device='cpu', seed=1, batch_size=4))
    rng = np.random.default_rng(0)
    batch = Batch(obs_frames=rng.integers(0, 255, (4, 4, 36, 36), dtype=np.uint8),
                  obs_vec=np.zeros((4, 53), np.float32), actions=np.zeros((4, 2), np.float32),
                  rewards=np.ones(4, np.float32),
                  next_frames=rng.integers(0, 255, (4, 4, 36, 36), dtype=np.uint8),
                  next_vec=np.zeros((4, 53), np.float32), terminated=np.zeros(4, np.float32),
                  truncated=np.zeros(4, np.float32))
    before = agent.actor_cnn.feature_norm.weight.detach().clone()
    agent.update(batch)
    agent.update(batch)
    assert not torch.equal(before, agent.actor_cnn.feature_norm.weight)
    assert 'actor_cnn.feature_norm.weight' in agent.state_tensors()[0]
    assert 'target_actor_cnn.feature_norm.weight' in agent.state_tensors()[0]
    assert 'cnn.feature_norm.bias' in agent.policy_state()


def test_precision_auto_follows_the_hardware_and_fp32_is_the_default():
    assert TD3Config().precision == 'fp32'
    with pytest.raises(ValueError, match='precision'):
        TD3Config(precision='fp16')
    cpu = torch.device('cpu')
    assert resolve_precision('fp32', cpu) == 'fp32'
    assert resolve_precision('bf16', cpu) == 'bf16'
    assert resolve_precision('auto', cpu) == ('bf16' if native_bf16(cpu) else 'fp32')
    assert make_agent(precision='auto').precision == resolve_precision('auto', cpu)


def test_bf16_keeps_float32_weights_adam_state_targets_and_losses():
    agent = make_agent(precision='bf16')
    for batch in (make_batch(seed=s) for s in range(2)):  # a critic-only and an actor update
        metrics = agent.update(batch)
    assert {'critic_loss', 'actor_loss', 'q1_mean', 'target_q_mean'} <= metrics.keys()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in metrics.values())
    tensors, _ = agent.state_tensors()
    floats = {k: v for k, v in tensors.items() if k != 'rng.policy_noise'}
    assert floats and all(v.dtype == torch.float32 for v in floats.values())
    assert agent.td_target(make_batch(seed=3)).dtype == torch.float32


def test_bf16_losses_track_fp32_losses():
    # Same weights, same batch: bf16 rounds the network passes (8-bit mantissa), so the losses
    # agree to about a percent, and both precisions lower the critic loss alike.
    batch = make_batch(size=64, seed=4)
    runs = {}
    for precision in ('fp32', 'bf16'):
        agent = make_agent(precision=precision, seed=5, critic_lr=1e-3)
        runs[precision] = [float(agent.update(batch)['critic_loss']) for _ in range(30)]
    fp32, bf16 = np.array(runs['fp32']), np.array(runs['bf16'])
    assert abs(bf16[0] - fp32[0]) <= 0.02 * fp32[0]
    assert bf16[-1] < 0.5 * bf16[0] and fp32[-1] < 0.5 * fp32[0]
    assert abs(bf16[-1] - fp32[-1]) <= 0.25 * fp32[0]


def test_bc_term_is_td3_plus_bc_and_needs_labels():
    batch = make_batch(size=16, seed=6)
    labels = np.random.default_rng(7).uniform(-1, 1, (16, 2)).astype(np.float32)
    agent = make_agent(bc_weight=0.7, bc_alpha=2.5)
    with pytest.raises(ValueError, match='labels'):
        agent.actor_loss(batch)
    loss, metrics = agent.actor_loss(batch, labels)
    b = agent.prepare(batch)
    with torch.no_grad():
        action = agent.actor(torch.cat([agent.actor_cnn(b.obs), b.obs_vec], 1))
        q = agent.critic.Q1(torch.cat([agent.critic_cnn(b.obs), b.obs_vec], 1), action)
        bc = (action - torch.from_numpy(labels)).square().mean()
        expected = -2.5 * q.mean() / q.abs().mean() + 0.7 * bc
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(metrics['actor_bc_mse'], bc)


def test_bc_term_alone_clones_the_labels():
    # With the Q term negligible (alpha tiny), the actor learns the labels: a pure BC check
    # that the gradient of the BC term reaches the actor and points the right way.
    batch = make_batch(size=32, seed=8)
    labels = np.tile(np.array([[0.5, -0.3]], np.float32), (32, 1))
    agent = make_agent(bc_weight=1.0, bc_alpha=1e-6, policy_frequency=1, actor_lr=3e-3)
    errors = [float(agent.update(batch, labels)['actor_bc_mse']) for _ in range(60)]
    assert errors[-1] < 0.1 * errors[0]


def test_critic_warmup_keeps_the_actor_until_it_ends():
    agent = make_agent(critic_warmup_updates=4, policy_frequency=2)
    start = snapshot(agent.actor)
    critic_start = snapshot(agent.critic)
    for seed in range(4):
        metrics = agent.update(make_batch(seed=seed))
        assert 'actor_loss' not in metrics
    assert same(snapshot(agent.actor), start)
    assert not same(snapshot(agent.critic), critic_start)
    agent.update(make_batch(seed=4))
    metrics = agent.update(make_batch(seed=5))  # update 6: past the warm-up, an actor update
    assert 'actor_loss' in metrics and not same(snapshot(agent.actor), start)


def test_load_policy_state_starts_actor_and_its_targets_from_a_policy():
    source = make_agent(seed=3)
    agent = make_agent(seed=4)
    critic = snapshot(agent.critic)
    agent.load_policy_state(source.policy_state())
    for mine, theirs in ((agent.actor, source.actor), (agent.target_actor, source.actor),
                         (agent.actor_cnn, source.actor_cnn),
                         (agent.target_actor_cnn, source.actor_cnn)):
        assert same(snapshot(mine), snapshot(theirs))
    assert same(snapshot(agent.critic), critic)


def test_returns_replace_td_targets_where_given():
    batch = make_batch(size=6, seed=9)
    agent = make_agent(policy_noise=0.0)
    returns = np.array([np.nan, 5.0, np.nan, -2.0, 100.0, np.nan], np.float32)
    _, plain = agent.critic_loss(batch)
    td = agent.td_target(batch)
    _, mixed = agent.critic_loss(batch, returns)
    expected = torch.where(torch.isnan(torch.from_numpy(returns)), td,
                           torch.from_numpy(returns))
    torch.testing.assert_close(mixed['target_q_mean'], expected.mean())
    assert not torch.equal(mixed['target_q_mean'], plain['target_q_mean'])


def test_targets_become_exact_copies_when_the_warmup_ends():
    agent = make_agent(critic_warmup_updates=3, policy_frequency=2)
    for seed in range(3):
        agent.update(make_batch(seed=seed))
    assert same(snapshot(agent.target_critic), snapshot(agent.critic))
    assert same(snapshot(agent.target_critic_cnn), snapshot(agent.critic_cnn))
    agent.update(make_batch(seed=3))  # an actor step and a regular Polyak blend
    assert not same(snapshot(agent.target_critic), snapshot(agent.critic))

