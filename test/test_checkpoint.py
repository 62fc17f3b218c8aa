"""Tests for safetensors policy checkpoints: round trip, refusals, atomic writes, rotation."""
import os
import pickle
import re
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

from av_td3_ros.policy import checkpoint as checkpoint_module
from av_td3_ros.policy.checkpoint import (
    POLICY_FORMAT,
    CheckpointError,
    PolicySpec,
    latest_policy,
    load_policy,
    policy_path,
    prune_policies,
    read_metadata,
    remove_stale_temps,
    resolve_checkpoint,
    save_policy,
    save_policy_state,
)
from av_td3_ros.policy.features import FeatureConfig
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig


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
    with pytest.raises(CheckpointError, match="unknown fields \\['layer_norm'\\]") as error:
        load_policy(path)
    assert str(path) in str(error.value)


def test_bad_config_json_is_refused_naming_the_file(policy, tmp_path):
    metadata = {'format': POLICY_FORMAT, **PolicySpec().to_metadata()}
    metadata['features'] = '{"n_waypoints": 25,'
    path = tmp_path / 'broken_json.safetensors'
    save_file(policy.state_dict(), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match='bad features config') as error:
        load_policy(path)
    assert str(path) in str(error.value)


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

def test_load_reads_the_file_exactly_once(saved, monkeypatch):
    import builtins
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', counting_open)
    monkeypatch.setattr(os, 'open', lambda *a, **k: pytest.fail('os.open during a load'))
    load_policy(saved, expected=PolicySpec())
    assert opened.count(str(saved)) == 1


SMALL = NetworkConfig(features_dim=8, hidden_dim=8)
REPLACER = r"""
import os, sys
directory, sources = sys.argv[1], [open(p, 'rb').read() for p in sys.argv[2:4]]
target, stop, k = os.path.join(directory, 'policy.safetensors'), os.path.join(directory, 'stop'), 0
while not os.path.exists(stop):
    tmp = os.path.join(directory, '.policy.safetensors.%08d.tmp' % (k % 10**8))
    with open(tmp, 'wb') as handle:
        handle.write(sources[k % 2])
    os.replace(tmp, target)  # what every atomic writer does: a new file under the old name
    k += 1
print(k)
"""


def test_concurrent_replace_never_mixes_metadata_and_weights(tmp_path):
    # Two policies that differ in their spec (activation) and their weights. One process
    # keeps replacing the file with either; every load must pair one file's spec with that
    # same file's weights (a two-read load accepted ReLU weights under LeakyReLU metadata).
    variants = {}
    for seed, activation in ((1, 'leaky_relu'), (2, 'relu')):
        torch.manual_seed(seed)
        spec = PolicySpec(network=NetworkConfig(features_dim=8, hidden_dim=8,
                                                activation=activation))
        policy = ActorPolicy(spec.network)
        source = tmp_path / f'{activation}.safetensors'
        save_policy(source, policy, spec)
        variants[activation] = (source, policy.state_dict()['actor.fc1.weight'].clone())
    shared = tmp_path / 'shared'
    shared.mkdir()
    target = shared / 'policy.safetensors'
    target.write_bytes(variants['relu'][0].read_bytes())
    replacer = subprocess.Popen([sys.executable, '-c', REPLACER, str(shared),
                                 *(str(v[0]) for v in variants.values())],
                                stdout=subprocess.PIPE, text=True)
    results = {'mixed': 0, 'loads': 0, 'seen': set()}
    lock = threading.Lock()

    def load_many(count):
        for _ in range(count):
            loaded, metadata = load_policy(target)
            activation = PolicySpec.from_metadata(metadata).network.activation
            weights = loaded.state_dict()['actor.fc1.weight']
            with lock:
                results['loads'] += 1
                results['seen'].add(activation)
                if not torch.equal(weights, variants[activation][1]):
                    results['mixed'] += 1

    try:
        readers = [threading.Thread(target=load_many, args=(500,)) for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        (shared / 'stop').touch()
        replacements = int(replacer.communicate(timeout=30)[0])
    assert results['loads'] == 1000
    assert results['mixed'] == 0
    assert replacements > 100 and results['seen'] == {'leaky_relu', 'relu'}


def test_a_policy_name_is_never_reused_for_other_weights(tmp_path):
    torch.manual_seed(7)
    first, second = ActorPolicy(SMALL), ActorPolicy(SMALL)
    spec = PolicySpec(network=SMALL)
    path = policy_path(tmp_path, 500)
    assert save_policy_state(path, first.state_dict(), spec, replace=False)
    before = path.read_bytes()
    # A resumed trainer reaching step 500 again must not rewrite policy_500 with its weights.
    assert not save_policy_state(path, second.state_dict(), spec, replace=False)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_remove_stale_temps_only_touches_our_own_pattern(tmp_path):
    ours = ['.policy_000000100.safetensors.k2_x9abc.tmp',
            '.policy_000000200.safetensors.a1b2c3d4.tmp']
    theirs = ['.training_state.safetensors.a1b2c3d4.tmp',  # another target name
              '.policy_000000100.safetensors.tmp',  # not mkstemp's 8 characters
              '.policy_000000100.safetensors.ABCDEFGH.tmp',  # mkstemp never uses upper case
              'policy_000000100.safetensors.a1b2c3d4.tmp',  # no leading dot
              'policy_000000100.safetensors', 'notes.tmp']
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / '.policy_000000300.safetensors.dir12345.tmp').mkdir()  # not a file
    removed = remove_stale_temps(tmp_path, checkpoint_module.POLICY_PATTERN)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        theirs + ['.policy_000000300.safetensors.dir12345.tmp'])
    assert remove_stale_temps(tmp_path / 'missing', re.compile('.*')) == []


def test_start_up_cleaning_of_a_run_dir_removes_only_our_writers_temps(tmp_path):
    checkpoints = tmp_path / 'checkpoints'
    checkpoints.mkdir()
    (tmp_path / 'tb').mkdir()
    ours = [tmp_path / '.training_state.safetensors.ab_cd123.tmp',
            checkpoints / '.policy_000000008.safetensors.q1w2e3r4.tmp']
    theirs = [tmp_path / 'tb' / '.tmpAb3dE9', tmp_path / '.tmp', tmp_path / '.tmpAb3dE9',
              checkpoints / '.other.safetensors.q1w2e3r4.tmp']
    for path in ours + theirs:
        path.write_bytes(b'x')
    assert sorted(checkpoint_module.remove_stale_run_temps(tmp_path)) == sorted(ours)
    assert all(path.exists() for path in theirs)


def test_a_write_creates_no_file_but_its_own_temp_and_target(policy, tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace_and_look(source, target):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return real_replace(source, target)

    monkeypatch.setattr(os, 'replace', replace_and_look)
    save_policy(tmp_path / 'policy.safetensors', policy, PolicySpec())
    (names,) = seen
    assert len(names) == 1 and checkpoint_module.TEMP_PATTERN.match(names[0])


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

    def failing_serialize(tensors, metadata=None):
        raise OSError('disk full')

    monkeypatch.setattr(checkpoint_module, 'serialize', failing_serialize)
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
