"""Tests for safetensors policy checkpoints: round trip, refusals, atomic writes, rotation."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from av_td3_ros import checkpoint as checkpoint_module
from av_td3_ros.checkpoint import (
    POLICY_FORMAT,
    CheckpointError,
    PolicySpec,
    latest_policy,
    load_policy,
    policy_path,
    prune_policies,
    read_metadata,
    resolve_checkpoint,
    save_policy,
)
from av_td3_ros.features import FeatureConfig
from av_td3_ros.networks import ActorPolicy, NetworkConfig
from av_td3_ros.preprocessing import PreprocessConfig


@pytest.fixture(scope='module')
def policy():
    """Return one random default policy (tests must not modify it)."""
    torch.manual_seed(3)
    return ActorPolicy(NetworkConfig()).eval()


@pytest.fixture(scope='module')
def saved(policy, tmp_path_factory):
    """Return the path of `policy` saved with the default spec."""
    path = tmp_path_factory.mktemp('ckpt') / 'policy.safetensors'
    save_policy(path, policy, PolicySpec(), extra={'total_it': '1234'})
    return path


def sample_inputs(batch=2, kinematic_dim=53):
    generator = torch.Generator().manual_seed(5)
    frames = torch.rand(batch, 4, 84, 84, generator=generator) * 2 - 1
    return frames, torch.randn(batch, kinematic_dim, generator=generator)


def test_round_trip_gives_identical_outputs(policy, saved):
    loaded, metadata = load_policy(saved, expected=PolicySpec())
    assert not loaded.training
    frames, kinematics = sample_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(frames, kinematics), policy(frames, kinematics))
    for name, tensor in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert metadata['format'] == POLICY_FORMAT
    assert metadata['total_it'] == '1234'


def test_round_trip_keeps_a_non_default_spec(tmp_path):
    spec = PolicySpec(network=NetworkConfig(activation='prelu', kinematic_dim=23,
                                            negative_slope=0.05, max_action=0.5),
                      preprocessing=PreprocessConfig(scale='unit', stack_fill='repeat_first'),
                      features=FeatureConfig(n_waypoints=10))
    torch.manual_seed(0)
    policy = ActorPolicy(spec.network)
    save_policy(tmp_path / 'p.safetensors', policy, spec)
    loaded, metadata = load_policy(tmp_path / 'p.safetensors', expected=spec)
    assert loaded.config == spec.network
    assert PolicySpec.from_metadata(metadata) == spec
    frames, kinematics = sample_inputs(kinematic_dim=23)
    with torch.no_grad():
        assert torch.equal(loaded(frames, kinematics), policy(frames, kinematics))


@pytest.mark.parametrize('expected,field', [
    (PolicySpec(network=NetworkConfig(activation='relu')), 'network.activation'),
    (PolicySpec(network=NetworkConfig(negative_slope=0.2)), 'network.negative_slope'),
    (PolicySpec(preprocessing=PreprocessConfig(scale='unit')), 'preprocessing.scale'),
    (PolicySpec(preprocessing=PreprocessConfig(stack_fill='repeat_first')),
     'preprocessing.stack_fill'),
    (PolicySpec(features=FeatureConfig(lateral_scale=3.0)), 'features.lateral_scale'),
])
def test_mismatched_spec_is_refused_naming_the_field(saved, expected, field):
    with pytest.raises(CheckpointError, match='does not match the driver') as info:
        load_policy(saved, expected=expected)
    message = str(info.value)
    assert field in message
    # Only the differing field is named.
    assert message.count('!= checkpoint') == 1


def test_mismatch_lists_every_differing_field(saved):
    expected = PolicySpec(network=NetworkConfig(kinematic_dim=23),
                          features=FeatureConfig(n_waypoints=10))
    with pytest.raises(CheckpointError) as info:
        load_policy(saved, expected=expected)
    assert 'network.kinematic_dim: driver 23 != checkpoint 53' in str(info.value)
    assert 'features.n_waypoints: driver 10 != checkpoint 25' in str(info.value)


def test_non_policy_safetensors_file_is_refused(tmp_path):
    path = tmp_path / 'other.safetensors'
    save_file({'weight': torch.zeros(3)}, str(path), metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match='not an av_td3_ros policy checkpoint'):
        load_policy(path)


def test_policy_format_without_configs_is_refused(tmp_path):
    path = tmp_path / 'bare.safetensors'
    save_file({'weight': torch.zeros(3)}, str(path), metadata={'format': POLICY_FORMAT})
    with pytest.raises(CheckpointError, match="no 'network' config"):
        load_policy(path)


def test_unknown_config_field_is_refused(policy, tmp_path):
    metadata = {'format': POLICY_FORMAT, **PolicySpec().to_metadata()}
    metadata['network'] = metadata['network'][:-1] + ', "layer_norm": true}'
    path = tmp_path / 'future.safetensors'
    save_file(policy.state_dict(), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="unknown fields \\['layer_norm'\\]"):
        load_policy(path)


def test_right_metadata_with_missing_tensors_is_refused(policy, tmp_path):
    state = dict(policy.state_dict())
    del state['actor.fc3.bias']
    path = tmp_path / 'partial.safetensors'
    save_file(state, str(path), metadata={'format': POLICY_FORMAT, **PolicySpec().to_metadata()})
    with pytest.raises(CheckpointError, match='cannot load weights'):
        load_policy(path)


@pytest.mark.parametrize('keep_bytes', [0, 7, 100, 5000, -8])
def test_truncated_file_is_refused(saved, tmp_path, keep_bytes):
    data = saved.read_bytes()
    path = tmp_path / 'truncated.safetensors'
    path.write_bytes(data[:keep_bytes])
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_policy(path)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / 'noise.safetensors'
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load_policy(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_policy(tmp_path / 'nope.safetensors')


@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    torch.manual_seed(0)
    bad = ActorPolicy(NetworkConfig())
    with torch.no_grad():
        bad.cnn.conv2.weight[3, 1, 0, 0] = value
    save_policy(tmp_path / 'bad.safetensors', bad, PolicySpec())
    with pytest.raises(CheckpointError, match='non-finite values in cnn.conv2.weight'):
        load_policy(tmp_path / 'bad.safetensors')


# --- no pickle ---------------------------------------------------------------------------------

def test_pth_renamed_to_safetensors_is_refused(policy, tmp_path):
    path = tmp_path / 'policy.safetensors'
    torch.save(policy.state_dict(), path)
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        load_policy(path)


def test_loading_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError('load_policy must not unpickle')

    class ForbiddenUnpickler:
        """Stand-in that fails if anything tries to unpickle."""

        def __init__(self, *args, **kwargs):
            forbidden()

    monkeypatch.setattr(torch, 'load', forbidden)
    monkeypatch.setattr(pickle, 'load', forbidden)
    monkeypatch.setattr(pickle, 'loads', forbidden)
    monkeypatch.setattr(pickle, 'Unpickler', ForbiddenUnpickler)
    loaded, _ = load_policy(saved)
    assert isinstance(loaded, ActorPolicy)


# --- atomic writes -----------------------------------------------------------------------------

def test_save_leaves_no_temp_files(policy, tmp_path):
    for step in (10, 20, 30):
        save_policy(policy_path(tmp_path, step), policy, PolicySpec())
    save_policy(policy_path(tmp_path, 30), policy, PolicySpec())  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'policy_000000010.safetensors', 'policy_000000020.safetensors',
        'policy_000000030.safetensors']


def test_failed_write_keeps_the_old_file_and_removes_the_temp_file(policy, saved, tmp_path,
                                                                    monkeypatch):
    path = tmp_path / 'policy.safetensors'
    path.write_bytes(saved.read_bytes())
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, 'wb') as handle:
            handle.write(b'\x00' * 100)
        raise OSError('disk full')

    monkeypatch.setattr(checkpoint_module, 'save_file', half_write)
    with pytest.raises(OSError, match='disk full'):
        save_policy(path, policy, PolicySpec())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['policy.safetensors']
    load_policy(path)


def test_save_creates_missing_directories(policy, tmp_path):
    path = tmp_path / 'a' / 'b' / 'policy.safetensors'
    save_policy(path, policy, PolicySpec())
    assert read_metadata(path)['format'] == POLICY_FORMAT


# --- latest / prune ----------------------------------------------------------------------------

def touch_policies(directory, steps):
    for step in steps:
        (directory / f'policy_{step}.safetensors').write_bytes(b'x')


def test_policy_path_is_zero_padded(tmp_path):
    assert policy_path(tmp_path, 1234).name == 'policy_000001234.safetensors'


def test_latest_policy_picks_the_highest_step_numerically(tmp_path):
    touch_policies(tmp_path, ['000000010', '000000200', '000000003', '99', '100'])
    for name in ('.policy_000009999.safetensors.abc.tmp', 'policy_latest.safetensors',
                 'policy_000009999.safetensors.bak', 'other_000099999.safetensors'):
        (tmp_path / name).write_bytes(b'x')
    assert latest_policy(tmp_path) == tmp_path / 'policy_000000200.safetensors'


def test_latest_policy_none_for_empty_or_missing_directory(tmp_path):
    assert latest_policy(tmp_path) is None
    assert latest_policy(tmp_path / 'missing') is None


def test_resolve_checkpoint(tmp_path):
    touch_policies(tmp_path, ['000000001', '000000002'])
    assert resolve_checkpoint(tmp_path) == tmp_path / 'policy_000000002.safetensors'
    file = tmp_path / 'policy_000000001.safetensors'
    assert resolve_checkpoint(file) == file


def test_prune_policies_keeps_the_newest(tmp_path):
    touch_policies(tmp_path, ['000000005', '000000030', '000000010', '000000020'])
    (tmp_path / 'notes.txt').write_text('keep me')
    (tmp_path / 'other.safetensors').write_bytes(b'x')
    prune_policies(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'notes.txt', 'other.safetensors', 'policy_000000020.safetensors',
        'policy_000000030.safetensors']
    prune_policies(tmp_path, keep=5)
    assert len(list(tmp_path.iterdir())) == 4
    prune_policies(tmp_path, keep=1)
    assert latest_policy(tmp_path) == tmp_path / 'policy_000000030.safetensors'
    assert not (tmp_path / 'policy_000000020.safetensors').exists()


def test_the_checkpoint_decides_what_the_actor_sees(tmp_path):
    torch.manual_seed(4)
    camera = ActorPolicy(NetworkConfig(kinematic_inputs='speed')).eval()
    spec = PolicySpec(network=NetworkConfig(kinematic_inputs='speed'))
    path = tmp_path / 'camera.safetensors'
    save_policy(path, camera, spec)
    # a driver with default parameters (kinematic_inputs 'all') loads it, masked
    policy, _ = load_policy(path, PolicySpec())
    assert policy.config.kinematic_inputs == 'speed'
    frames, kinematics = torch.zeros(1, 4, 84, 84), torch.randn(1, 53)
    with torch.no_grad():
        assert torch.equal(policy(frames, kinematics), camera(frames, kinematics))
    # every other field must still match
    with pytest.raises(CheckpointError, match='feature_norm'):
        load_policy(path, PolicySpec(network=NetworkConfig(feature_norm='layernorm')))
