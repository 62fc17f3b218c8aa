"""Tests for importing av_td3_system `.pth` checkpoints (built here in its layout)."""
import functools
import pickle

import torch
import torch.nn.functional as F

from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
from av_td3_ros.tools.importer import main

CNN_SHAPES = {'conv1.weight': (32, 4, 8, 8), 'conv1.bias': (32,),
              'conv2.weight': (64, 32, 4, 4), 'conv2.bias': (64,),
              'conv3.weight': (64, 64, 3, 3), 'conv3.bias': (64,),
              'fc.weight': (512, 3136), 'fc.bias': (512,)}


def random_layers(shapes, generator):
    """Return {name: tensor} with fan-in scaled random values (non-zero biases too)."""
    out = {}
    for name, shape in shapes.items():
        fan_in = shapes[name.replace('.bias', '.weight')][1:]
        fan_in = int(torch.tensor(fan_in).prod()) if fan_in else shape[0]
        out[name] = torch.randn(shape, generator=generator) / fan_in ** 0.5
    return out


def mlp_shapes(in_dim, out_dim, prefix=''):
    return {f'{prefix}fc1.weight': (256, in_dim), f'{prefix}fc1.bias': (256,),
            f'{prefix}fc2.weight': (256, 256), f'{prefix}fc2.bias': (256,),
            f'{prefix}fc3.weight': (out_dim, 256), f'{prefix}fc3.bias': (out_dim,)}


def adam_state(tensors):
    """Return a real Adam state_dict after one step over copies of `tensors`."""
    params = [torch.nn.Parameter(t.clone()) for t in tensors.values()]
    optimizer = torch.optim.Adam(params, lr=3e-4)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def legacy_checkpoint(state_dim=565, seed=0, total_it=4321, full=True):
    """Return a dict laid out like av_td3_system's `torch.save` checkpoints.

    `full=False` leaves out the critics and optimizer states: the importer ignores them, and
    the tests that only need the actor run faster without building and writing them.
    """
    generator = torch.Generator().manual_seed(seed)
    actor_cnn = random_layers(CNN_SHAPES, generator)
    actor = random_layers(mlp_shapes(state_dim, 2), generator)
    data = {
        'total_it': total_it,
        'actor_state_dict': actor,
        'config': {'algorithm': {'learning_rate': 3e-4, 'batch_size': 256,
                                 'hidden_layers': [256, 256]},
                   'environment': {'town': 'Town01', 'fixed_delta_seconds': 0.05},
                   'use_cnn': True, 'note': None},
        'use_dict_buffer': True,
        'discount': 0.99,
        'tau': 0.005,
        'policy_freq': 2,
        'policy_noise': 0.2,
        'noise_clip': 0.5,
        'max_action': 1.0,
        'state_dim': state_dim,
        'action_dim': 2,
        'actor_cnn_state_dict': actor_cnn,
    }
    if full:
        critic_cnn = random_layers(CNN_SHAPES, generator)
        critic = {}
        for q in ('Q1.', 'Q2.'):
            critic.update(random_layers(mlp_shapes(state_dim + 2, 1, q), generator))
        data.update({
            'critic_state_dict': critic,
            'actor_optimizer_state_dict': adam_state(actor),
            'critic_optimizer_state_dict': adam_state(critic),
            'critic_cnn_state_dict': critic_cnn,
            'actor_cnn_optimizer_state_dict': adam_state(actor_cnn),
            'critic_cnn_optimizer_state_dict': adam_state(critic_cnn),
        })
    return data


@functools.cache
def _cached_checkpoint(state_dim, seed, full):
    return legacy_checkpoint(state_dim, seed, full=full)


def checkpoint_copy(state_dim=565, seed=0, full=True):
    """Return a cached legacy checkpoint with fresh parameter dicts (tests may edit them)."""
    data = dict(_cached_checkpoint(state_dim, seed, full))
    for key in ('actor_state_dict', 'actor_cnn_state_dict', 'critic_state_dict',
                'critic_cnn_state_dict'):
        if key in data:
            data[key] = dict(data[key])
    return data


def reference_action(data, frames, kinematics, activation='leaky_relu'):
    """Run the original actor by hand: CNN (conv -> act x3, flatten, fc), then the MLP."""
    cnn, actor = data['actor_cnn_state_dict'], data['actor_state_dict']

    def act(x):
        return F.leaky_relu(x, 0.01) if activation == 'leaky_relu' else F.relu(x)

    x = act(F.conv2d(frames, cnn['conv1.weight'], cnn['conv1.bias'], stride=4))
    x = act(F.conv2d(x, cnn['conv2.weight'], cnn['conv2.bias'], stride=2))
    x = act(F.conv2d(x, cnn['conv3.weight'], cnn['conv3.bias'], stride=1))
    features = F.linear(x.reshape(x.shape[0], -1), cnn['fc.weight'], cnn['fc.bias'])
    state = torch.cat([features, kinematics], dim=1)
    h = F.relu(F.linear(state, actor['fc1.weight'], actor['fc1.bias']))
    h = F.relu(F.linear(h, actor['fc2.weight'], actor['fc2.bias']))
    return torch.tanh(F.linear(h, actor['fc3.weight'], actor['fc3.bias'])) * data['max_action']


def sample_inputs(kinematic_dim, batch=3):
    generator = torch.Generator().manual_seed(11)
    frames = torch.rand(batch, 4, 84, 84, generator=generator) * 2 - 1
    return frames, torch.randn(batch, kinematic_dim, generator=generator) * 0.5


def import_file(tmp_path, data, *options):
    src, dst = tmp_path / 'td3_scenario_0_step_5000.pth', tmp_path / 'policy.safetensors'
    torch.save(data, src)
    return main([str(src), str(dst), *options]), src, dst


# --- successful imports ------------------------------------------------------------------------

def test_import_matches_the_original_forward_pass(tmp_path, capsys):
    data = checkpoint_copy()
    code, src, dst = import_file(tmp_path, data)
    assert code == 0
    assert 'kinematic_dim=53' in capsys.readouterr().out
    policy, metadata = load_policy(dst, expected=PolicySpec())  # the driver's defaults
    assert metadata['total_it'] == '4321'
    assert metadata['source'] == str(src)
    frames, kinematics = sample_inputs(53)
    with torch.no_grad():
        actions = policy(frames, kinematics)
        expected = reference_action(data, frames, kinematics)
    torch.testing.assert_close(actions, expected, rtol=0, atol=1e-6)
    assert actions.abs().max() > 0.05  # a saturated or zero policy would prove little


def test_import_of_the_older_23_value_layout(tmp_path):
    data = checkpoint_copy(state_dim=535, full=False)
    code, _, dst = import_file(tmp_path, data)
    assert code == 0
    policy, metadata = load_policy(dst)
    spec = PolicySpec.from_metadata(metadata)
    assert spec.network.kinematic_dim == 23
    assert spec.features.n_waypoints == 10 and spec.features.size == 23
    frames, kinematics = sample_inputs(23)
    with torch.no_grad():
        torch.testing.assert_close(policy(frames, kinematics),
                                   reference_action(data, frames, kinematics), rtol=0, atol=1e-6)


def test_import_with_relu_and_unit_scale_options(tmp_path):
    data = checkpoint_copy(full=False)
    code, _, dst = import_file(tmp_path, data, '--activation', 'relu', '--scale', 'unit')
    assert code == 0
    policy, metadata = load_policy(dst)
    spec = PolicySpec.from_metadata(metadata)
    assert spec.network.activation == 'relu'
    assert spec.preprocessing.scale == 'unit'
    frames, kinematics = sample_inputs(53)
    with torch.no_grad():
        torch.testing.assert_close(policy(frames, kinematics),
                                   reference_action(data, frames, kinematics, 'relu'),
                                   rtol=0, atol=1e-6)


# --- refusals ----------------------------------------------------------------------------------

class Exploit:
    """Pickles as a call to open(marker, 'w'): unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_exploit_payload_really_runs_under_plain_pickle(tmp_path):
    # Proves the refusal test below is meaningful: plain unpickling creates the file.
    marker = tmp_path / 'plain_pickle_ran'
    handle = pickle.loads(pickle.dumps({'x': Exploit(marker)}))['x']
    handle.close()
    assert marker.exists()


def test_pickled_arbitrary_object_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    data = checkpoint_copy(full=False)
    data['config'] = {'payload': Exploit(marker)}
    code, src, dst = import_file(tmp_path, data)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith('import_checkpoint: ')
    assert 'weights_only' in err and str(src) in err
    assert not marker.exists()
    assert not dst.exists()


def test_layer_norm_revision_is_refused(tmp_path, capsys):
    data = checkpoint_copy(full=False)
    cnn = data['actor_cnn_state_dict']
    cnn['ln1.weight'] = torch.ones(32, 20, 20)
    cnn['ln1.bias'] = torch.zeros(32, 20, 20)
    code, _, dst = import_file(tmp_path, data)
    assert code == 1
    err = capsys.readouterr().err
    assert 'unsupported layers' in err and 'ln1.weight' in err and 'ln1.bias' in err
    assert not dst.exists()


def test_missing_source_file(tmp_path, capsys):
    dst = tmp_path / 'out.safetensors'
    assert main([str(tmp_path / 'missing.pth'), str(dst)]) == 1
    assert 'no such file' in capsys.readouterr().err
    assert not dst.exists()


def test_file_that_is_not_a_dict(tmp_path, capsys):
    code, _, dst = import_file(tmp_path, torch.zeros(3))
    assert code == 1
    assert 'expected a dict' in capsys.readouterr().err
    assert not dst.exists()


def test_missing_actor_cnn(tmp_path, capsys):
    data = checkpoint_copy(full=False)
    del data['actor_cnn_state_dict']
    code, _, dst = import_file(tmp_path, data)
    assert code == 1
    assert "missing 'actor_cnn_state_dict'" in capsys.readouterr().err
    assert not dst.exists()


def test_missing_parameter(tmp_path, capsys):
    data = checkpoint_copy(full=False)
    del data['actor_state_dict']['fc2.bias']
    code, _, _ = import_file(tmp_path, data)
    assert code == 1
    assert "lacks parameters: ['fc2.bias']" in capsys.readouterr().err


def test_state_dim_that_is_not_3_plus_2n(tmp_path, capsys):
    data = checkpoint_copy(state_dim=564, full=False)
    code, _, _ = import_file(tmp_path, data)
    assert code == 1
    assert 'is not 3 + 2N' in capsys.readouterr().err


def test_wrong_shapes_are_refused(tmp_path, capsys):
    data = checkpoint_copy(full=False)
    data['actor_cnn_state_dict']['conv2.weight'] = torch.zeros(64, 32, 5, 5)
    code, _, dst = import_file(tmp_path, data)
    assert code == 1
    assert 'parameter shapes do not fit' in capsys.readouterr().err
    assert not dst.exists()
