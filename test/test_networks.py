"""Tests for NatureCNN, Actor, TwinCritic and ActorPolicy (shapes, activations, names)."""
import math

import pytest
import torch
from torch import nn

from av_td3_ros.learning.critic import TwinCritic
from av_td3_ros.policy.networks import Actor, ActorPolicy, NatureCNN, NetworkConfig

CNN_KEYS = {'conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias', 'conv3.weight',
            'conv3.bias', 'fc.weight', 'fc.bias'}
MLP_KEYS = {'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias', 'fc3.weight', 'fc3.bias'}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='module')
def cnn():
    """Return one default NatureCNN shared by the tests that only read it."""
    torch.manual_seed(1)
    return NatureCNN(NetworkConfig())


def frames_in_unit_interval(batch=4):
    """Return frames uniform in [-1, 1], as preprocessing produces them."""
    return torch.rand(batch, 4, 84, 84) * 2 - 1


# --- NatureCNN shapes and input checks ---------------------------------------------------------

def test_nature_cnn_shapes(cnn):
    assert cnn.flat_size == 64 * 7 * 7 == 3136
    assert cnn.fc.in_features == 3136 and cnn.fc.out_features == 512
    x = frames_in_unit_interval(3)
    pre = cnn.pre_activations(x)
    assert [tuple(p.shape) for p in pre] == [(3, 32, 20, 20), (3, 64, 9, 9), (3, 64, 7, 7)]
    assert tuple(cnn(x).shape) == (3, 512)


def test_nature_cnn_flat_size_follows_config():
    config = NetworkConfig(frame_stack=2, image_size=96, features_dim=128)
    cnn = NatureCNN(config)
    # 96 -> (96-8)/4+1 = 23 -> (23-4)/2+1 = 10 -> 10-3+1 = 8
    assert cnn.flat_size == 64 * 8 * 8
    assert tuple(cnn(torch.zeros(1, 2, 96, 96)).shape) == (1, 128)


@pytest.mark.parametrize('shape', [(2, 3, 84, 84), (2, 4, 64, 64), (4, 84, 84),
                                   (2, 84, 84, 4), (1, 1, 4, 84, 84)])
def test_nature_cnn_refuses_wrong_input_shape_with_clear_message(cnn, shape):
    with pytest.raises(ValueError) as info:
        cnn(torch.zeros(shape))
    message = str(info.value)
    assert '(B, 4, 84, 84)' in message
    assert str(tuple(shape)) in message


def test_no_activation_after_fc(cnn):
    x = frames_in_unit_interval(2)
    features = cnn(x)
    expected = cnn.fc(cnn.conv_stack(x))
    torch.testing.assert_close(features, expected)
    assert (features < 0).any()  # a ReLU after fc would make every feature >= 0


def test_cnn_init_kaiming_fan_out_and_zero_bias(cnn):
    for layer in (cnn.conv1, cnn.conv2, cnn.conv3, cnn.fc):
        assert (layer.bias == 0).all()
    # kaiming_normal_(fan_out, leaky_relu, a=0.01): std = gain / sqrt(fan_out)
    gain = math.sqrt(2.0 / (1 + 0.01 ** 2))
    std = gain / math.sqrt(32 * 8 * 8)
    assert cnn.conv1.weight.std().item() == pytest.approx(std, rel=0.1)


# --- LeakyReLU vs ReLU ---------------------------------------------------------------------------

def conv1_post_activation(cnn, x):
    return cnn.act1(cnn.conv1(x))


def test_leaky_relu_keeps_negative_activations_that_relu_zeroes():
    x = frames_in_unit_interval(8)
    leaky = NatureCNN(NetworkConfig())
    relu = NatureCNN(NetworkConfig(activation='relu'))
    relu.load_state_dict(leaky.state_dict())  # same weights, only the activation differs

    pre = leaky.conv1(x)
    negative = pre < 0
    assert 0.3 < negative.float().mean().item() < 0.7  # zero-centred input: ~half negative

    leaky_out = conv1_post_activation(leaky, x)
    relu_out = conv1_post_activation(relu, x)
    assert (leaky_out == 0).float().mean().item() < 1e-3
    assert (relu_out == 0).float().mean().item() > 0.3
    torch.testing.assert_close(leaky_out[negative], 0.01 * pre[negative])
    assert (relu_out[negative] == 0).all()
    # The two networks' features differ because ReLU threw the negative half away.
    assert not torch.allclose(leaky(x), relu(x))


@pytest.mark.parametrize('activation,slope', [('leaky_relu', 0.01), ('relu', 0.0)])
def test_gradient_reaches_negative_pre_activations_only_with_leaky_relu(activation, slope):
    cnn = NatureCNN(NetworkConfig(activation=activation))
    pre = cnn.conv1(frames_in_unit_interval(2))
    pre.retain_grad()
    cnn.act1(pre).sum().backward()
    negative = pre.detach() < 0
    assert negative.any()
    grads = pre.grad[negative]
    assert torch.allclose(grads, torch.full_like(grads, slope))
    assert torch.allclose(pre.grad[~negative], torch.ones_like(pre.grad[~negative]))


def test_leaky_relu_is_the_default_with_slope_0_01(cnn):
    assert isinstance(cnn.activation, nn.LeakyReLU)
    assert cnn.activation.negative_slope == 0.01
    assert cnn.act1 is cnn.act2 is cnn.act3 is cnn.activation


def test_other_negative_slope():
    cnn = NatureCNN(NetworkConfig(negative_slope=0.2))
    assert cnn.act1.negative_slope == 0.2
    x = frames_in_unit_interval(1)
    pre = cnn.conv1(x)
    negative = pre < 0
    torch.testing.assert_close(cnn.act1(pre)[negative], 0.2 * pre[negative])


def test_relu_option():
    cnn = NatureCNN(NetworkConfig(activation='relu'))
    assert all(isinstance(a, nn.ReLU) for a in (cnn.act1, cnn.act2, cnn.act3))
    assert set(cnn.state_dict()) == CNN_KEYS


def test_prelu_option_has_one_learned_slope_per_channel_and_layer():
    cnn = NatureCNN(NetworkConfig(activation='prelu', negative_slope=0.05))
    acts = (cnn.act1, cnn.act2, cnn.act3)
    assert all(isinstance(a, nn.PReLU) for a in acts)
    assert [a.weight.numel() for a in acts] == [32, 64, 64]
    assert all(torch.allclose(a.weight, torch.full_like(a.weight, 0.05)) for a in acts)
    assert len({id(a) for a in acts}) == 3
    assert set(cnn.state_dict()) == CNN_KEYS | {'act1.weight', 'act2.weight', 'act3.weight'}
    cnn(frames_in_unit_interval(1)).sum().backward()
    assert cnn.act1.weight.grad is not None and cnn.act1.weight.grad.abs().sum() > 0


def test_config_refuses_bad_values_naming_them():
    with pytest.raises(ValueError, match="activation.*'tanh'"):
        NetworkConfig(activation='tanh')
    with pytest.raises(ValueError, match='image_size must be >= 36'):
        NetworkConfig(image_size=32)
    with pytest.raises(ValueError, match='hidden_dim'):
        NetworkConfig(hidden_dim=0)


# --- parameter names (av_td3_system checkpoints) ----------------------------------------------

def test_parameter_names_match_av_td3_system():
    config = NetworkConfig()
    assert config.state_dim == 565
    assert set(NatureCNN(config).state_dict()) == CNN_KEYS
    actor = Actor(config)
    assert set(actor.state_dict()) == MLP_KEYS  # max_action is not persistent
    critic_keys = set(TwinCritic(config).state_dict())
    assert critic_keys == {f'{q}.{k}' for q in ('Q1', 'Q2') for k in MLP_KEYS}
    shapes = {k: tuple(v.shape) for k, v in actor.state_dict().items()}
    assert shapes['fc1.weight'] == (256, 565)
    assert shapes['fc3.weight'] == (2, 256)
    critic = TwinCritic(config).state_dict()
    assert tuple(critic['Q1.fc1.weight'].shape) == (256, 567)
    assert tuple(critic['Q2.fc3.weight'].shape) == (1, 256)


def test_actor_policy_names_are_prefixed():
    keys = set(ActorPolicy(NetworkConfig()).state_dict())
    assert keys == {f'cnn.{k}' for k in CNN_KEYS} | {f'actor.{k}' for k in MLP_KEYS}


# --- actor and critic ----------------------------------------------------------------------------

@pytest.mark.parametrize('max_action', [1.0, 2.5, 0.3])
def test_actor_output_within_max_action(max_action):
    config = NetworkConfig(max_action=max_action)
    actor = Actor(config)
    state = torch.randn(256, config.state_dim) * 100  # saturate the tanh
    actions = actor(state)
    assert tuple(actions.shape) == (256, 2)
    assert actions.abs().max().item() <= max_action + 1e-6
    assert actions.abs().max().item() > 0.9 * max_action


def test_actor_init_is_uniform_fan_in():
    actor = Actor(NetworkConfig())
    for layer in (actor.fc1, actor.fc2, actor.fc3):
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max().item() <= bound
        assert layer.bias.abs().max().item() <= bound


def test_twin_critic_shapes_and_independent_heads():
    config = NetworkConfig()
    critic = TwinCritic(config)
    state = torch.randn(5, config.state_dim)
    action = torch.rand(5, 2) * 2 - 1
    q1, q2 = critic(state, action)
    assert tuple(q1.shape) == (5, 1) and tuple(q2.shape) == (5, 1)
    assert not torch.allclose(q1, q2)


def test_actor_policy_end_to_end_shapes_and_range():
    config = NetworkConfig()
    policy = ActorPolicy(config)
    actions = policy(frames_in_unit_interval(3), torch.randn(3, config.kinematic_dim))
    assert tuple(actions.shape) == (3, 2)
    assert actions.abs().max().item() <= 1.0
    with pytest.raises(ValueError, match='NatureCNN expects input'):
        policy(torch.zeros(3, 3, 84, 84), torch.zeros(3, config.kinematic_dim))


@pytest.mark.parametrize('feature_norm', ['layernorm', 'layernorm_tanh'])
def test_feature_norm_options_bound_the_encoder_output(feature_norm):
    # Test that the optional LayerNorm (+tanh) after fc normalises features and is a named,
    # checkpointed module; 'none' (the seed's NatureCNN) has no such parameters.
    torch.manual_seed(0)
    cnn = NatureCNN(NetworkConfig(feature_norm=feature_norm))
    with torch.no_grad():
        cnn.fc.weight.mul_(100.0)  # what an encoder trained by the actor drifted to
        features = cnn(torch.rand(8, 4, 84, 84) * 2 - 1)
    assert 'feature_norm.weight' in cnn.state_dict()
    if feature_norm == 'layernorm_tanh':
        assert features.abs().max() <= 1.0
    else:
        assert features.mean(dim=1).abs().max() < 0.1
        assert features.std(dim=1).sub(1.0).abs().max() < 0.05
    assert 'feature_norm.weight' not in NatureCNN(NetworkConfig()).state_dict()


def test_unknown_feature_norm_is_refused():
    with pytest.raises(ValueError, match='feature_norm'):
        NetworkConfig(feature_norm='batchnorm')


def test_camera_profile_actor_sees_speed_but_not_the_route():
    torch.manual_seed(0)
    policy = ActorPolicy(NetworkConfig(kinematic_inputs='speed')).eval()
    frames = torch.rand(3, 4, 84, 84) * 2 - 1
    kinematics = torch.randn(3, 53)
    other_route = kinematics.clone()
    other_route[:, 1:] = torch.randn(3, 52)
    faster = kinematics.clone()
    faster[:, 0] += 1.0
    with torch.no_grad():
        base = policy(frames, kinematics)
        assert torch.equal(base, policy(frames, other_route))
        assert not torch.equal(base, policy(frames, faster))
        assert not torch.equal(base, policy(frames.flip(-1), kinematics))
    # the mask is no weight: state dicts of both profiles have the same keys and shapes
    full = ActorPolicy(NetworkConfig()).state_dict()
    assert {k: v.shape for k, v in policy.state_dict().items()} == \
        {k: v.shape for k, v in full.items()}


def test_kinematic_inputs_is_validated():
    with pytest.raises(ValueError, match='kinematic_inputs'):
        NetworkConfig(kinematic_inputs='route_only')
