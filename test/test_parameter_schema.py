# Test if the YAML files, bag_eval, the driver's checkpoint-spec rule and resume follow the
# one parameter schema (nodes/schema.py).
import json
from pathlib import Path

import pytest

from av_td3_ros.config_diff import config_differences
from av_td3_ros.nodes.carla_episode_manager import EPISODE_MANAGER
from av_td3_ros.nodes.driver_config import DRIVER, config_from_values
from av_td3_ros.nodes.schema import POLICY_SPEC, ParameterError, Schema, load_params_file
from av_td3_ros.nodes.sim_bridge import SIM_BRIDGE
from av_td3_ros.nodes.trainer import TRAINER, resume_differences
from av_td3_ros.policy.checkpoint import (
    CheckpointError,
    PolicySpec,
    load_policy,
    policy_path,
    save_policy,
)
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig

REPO = Path(__file__).resolve().parents[1]
SPEC_NAMES = {param.name for param in POLICY_SPEC}
# Per file: the schema, the parameters it leaves out on purpose, and the values that differ
# from the schema default on purpose. Every other parameter must be there with its default.
FILES = {
    'driver.yaml': (DRIVER, {
        # /carla/<role_name>/...: they follow role_name; launch files remap them.
        'camera_topic', 'odometry_topic', 'route_topic', 'control_topic',
        'episode_start_topic', 'policy_in_use_topic',
        # The checkpoint decides the policy spec (README: the checkpoint carries its spec).
        *SPEC_NAMES}, {}),
    'trainer.yaml': (TRAINER, {'camera_topic'}, {}),  # /carla/{role}/...: launch files pass it
    'trainer_sim.yaml': (TRAINER, {'camera_topic'}, {
        # The laptop profile for the stand-in (the file's own header says why).
        'run_dir': 'runs/sim', 'torch_threads': 1, 'feature_norm': 'layernorm_tanh',
        'buffer_capacity': 50000, 'batch_size': 64, 'actor_pretanh_penalty': 0.01,
        'learning_starts': 1000, 'updates_per_step': 0.25, 'checkpoint_every': 250,
        'keep_checkpoints': 3, 'state_every': 1000, 'health_every': 500,
        'max_episode_steps': 1200, 'max_lateral_deviation': 6.5, 'gamma': 0.998}),
    'sim_bridge.yaml': (SIM_BRIDGE, set(), {}),
}


@pytest.mark.parametrize('name', sorted(FILES))
def test_parameter_file_matches_the_schema(name):
    schema, omitted, overrides = FILES[name]
    node = 'sim_bridge' if schema is SIM_BRIDGE else schema.node
    values = load_params_file(REPO / 'config' / name, node)
    assert values, name
    unknown = sorted(set(values) - set(schema.params))
    assert unknown == [], f'{name}: not parameters of {schema.node}'
    missing = sorted(set(schema.params) - set(values) - omitted)
    assert missing == [], f'{name}: leaves out'
    assert sorted(omitted & set(values)) == [], f'{name}: lists what it should leave out'
    defaults = schema.defaults()
    for key, value in values.items():
        param = schema[key]
        # The exact type (rclpy fixes a parameter's type by its default: 1 is no float).
        assert type(value) is param.type, f'{name}: {key}={value!r} is no {param.type}'
        assert param.check(value) == value  # in range
        expected = overrides.get(key, defaults[key])
        assert value == expected, f'{name}: {key}={value!r}, schema default {defaults[key]!r}'
    assert set(overrides) <= set(values)


# Test if the schema catches what the YAML test relies on: a wrong type, range or name.
def test_schema_refuses_wrong_types_ranges_and_names():
    with pytest.raises(ParameterError, match='expected float'):
        TRAINER.read({'gamma': 'high'})
    with pytest.raises(ParameterError, match='expected int'):
        TRAINER.read({'batch_size': True})
    with pytest.raises(ParameterError, match=r'gamma=1.5 outside \[0.0, 1.0\]'):
        TRAINER.read({'gamma': 1.5})
    with pytest.raises(ParameterError, match='a list of str'):
        TRAINER.read({'vehicles': [1]})
    with pytest.raises(ParameterError, match="unknown sim_bridge parameters \\['fov'\\]"):
        SIM_BRIDGE.read({'fov': 90.0})
    assert TRAINER.read({'gamma': 1})['gamma'] == 1.0  # YAML's 1 for 1.0, as bag_eval takes
    assert EPISODE_MANAGER.read({'spawn_points': [1, 2, 3, 4]})['spawn_points'] == \
        [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match='declared twice'):
        Schema('x', POLICY_SPEC, POLICY_SPEC)


# Test if one place holds each shared default: the core dataclasses' values reach the schema.
def test_defaults_come_from_the_config_dataclasses():
    driver, trainer = DRIVER.defaults(), TRAINER.defaults()
    assert driver['learning_starts'] == trainer['learning_starts'] == 10000
    assert {name: driver[name] for name in SPEC_NAMES} == \
        {name: trainer[name] for name in SPEC_NAMES}
    assert config_from_values(driver, set()).spec == PolicySpec()
    assert driver['camera_topic'] == '/carla/ego_vehicle/rgb_front/image'
    assert DRIVER.read({'role_name': 'hero'})['control_topic'] == \
        '/carla/hero/vehicle_control_cmd'
    assert EPISODE_MANAGER.defaults()['camera_info_topic'] == \
        '/carla/ego_vehicle/rgb_front/camera_info'


@pytest.fixture
def unit_checkpoint(tmp_path):
    spec = PolicySpec(network=NetworkConfig(feature_norm='layernorm'),
                      preprocessing=PreprocessConfig(scale='unit'))
    path = policy_path(tmp_path, 7)  # a directory's policy_<step> name
    save_policy(path, ActorPolicy(spec.network), spec)
    return path, spec


# Test if the driver takes the spec from the checkpoint, except what the user set.
def test_driver_takes_the_unset_spec_fields_from_the_checkpoint(unit_checkpoint):
    path, spec = unit_checkpoint
    given = {'checkpoint': str(path)}
    config = config_from_values(DRIVER.read(given), set(given))
    assert config.spec == spec
    load_policy(path, config.spec)  # loads
    # A directory: its newest policy decides.
    given = {'checkpoint': str(path.parent)}
    assert config_from_values(DRIVER.read(given), set(given)).spec == spec
    # Set by the user (even to the default value): kept, and the checkpoint is refused.
    given = {'checkpoint': str(path), 'frame_scale': 'zero_centered'}
    config = config_from_values(DRIVER.read(given), set(given))
    assert config.spec.preprocessing.scale == 'zero_centered'
    assert config.spec.network.feature_norm == 'layernorm'  # not set: the checkpoint's
    with pytest.raises(CheckpointError) as info:
        load_policy(path, config.spec)
    assert str(info.value).endswith(
        "preprocessing.scale: driver 'zero_centered' != checkpoint 'unit'")


# Test if bag_eval follows the same rule: its given values count as set.
def test_bag_eval_takes_the_spec_from_the_checkpoint(unit_checkpoint):
    from av_td3_ros.tools.bags.offline_eval import driver_config
    path, spec = unit_checkpoint
    values = load_params_file(REPO / 'config' / 'driver.yaml', 'driver')
    assert driver_config({**values, 'checkpoint': str(path)}).spec == spec
    assert driver_config({**values, 'checkpoint': str(path), 'n_waypoints': 10}) \
        .spec.features.n_waypoints == 10


# Test if a resume under another spec names every difference.
def test_resume_names_each_spec_difference():
    spec = PolicySpec()
    other = PolicySpec(preprocessing=PreprocessConfig(scale='unit'),
                       network=NetworkConfig(activation='relu'))
    metadata = {'spec': json.dumps(other.to_dict())}
    assert resume_differences(spec, metadata) == [
        "network.activation: trainer 'leaky_relu' != training state 'relu'",
        "preprocessing.scale: trainer 'zero_centered' != training state 'unit'"]
    assert resume_differences(other, metadata) == []


def test_config_differences_nests_skips_and_names_both_sides():
    ours = {'a': 1, 'b': {'c': 2, 'd': 3}, 'e': 4}
    theirs = {'a': 1, 'b': {'c': 5, 'd': 6}}
    assert config_differences(ours, theirs, ('x', 'y'), skip={'b.d'}) == \
        ['b.c: x 2 != y 5', 'e: x 4 != y None']
