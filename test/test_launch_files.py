# Test that every launch file names real executables, params files and parameters.
import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO_LAUNCH, launch_nodes, shipped_params
from rcl_interfaces.srv import GetParameters
from ros_helpers import FakeBridge

from av_td3_ros.nodes.schema import load_params_file
from av_td3_ros.tools.launch_runner import LaunchError, executable_module, parse_launch_file

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted(REPO_LAUNCH.glob('*.launch.xml'))
# Arguments that make a file runnable without ros2 launch (its includes disabled).
RUNNABLE = {'carla_train.launch.xml': {'with_bridge': 'false'}}


def console_scripts():
    tree = ast.parse((REPO / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    return dict(item.value.split(' = ') for item in value.elts)
    raise AssertionError('setup.py has no console_scripts')


def test_there_are_launch_files():
    assert REPO_LAUNCH / 'driver.launch.xml' in LAUNCH_FILES


@pytest.mark.parametrize('launch_file', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist(launch_file, ros_env):
    description = parse_launch_file(launch_file, RUNNABLE.get(launch_file.name))
    scripts = console_scripts()
    assert description.nodes
    for spec in description.nodes:
        assert spec.package == 'av_td3_ros'
        assert spec.executable in scripts, f'{spec.executable} is not a console script'
        module = executable_module(spec.package, spec.executable)
        assert scripts[spec.executable] == f'{module}:main'
        source = (REPO / (module.replace('.', '/') + '.py')).read_text()
        assert 'def main(' in source
        for params_file in spec.param_files:
            assert Path(params_file).is_file(), params_file
            # The packaged copy must be the repo's file (setup.sh installs it).
            repo_copy = REPO / 'config' / Path(params_file).name
            assert Path(params_file).read_text() == repo_copy.read_text()
            content = yaml.safe_load(Path(params_file).read_text())
            assert all('ros__parameters' in section for section in content.values())
        for source_topic, target in spec.remaps:
            assert source_topic.startswith('/') and target
    for value in description.environment.values():
        if value.endswith('.xml'):
            assert Path(value).is_file(), value


def test_unknown_argument_and_missing_file_are_errors(ros_env):
    with pytest.raises(LaunchError, match='unknown launch arguments'):
        parse_launch_file(REPO_LAUNCH / 'driver.launch.xml', {'no_such_arg': '1'})
    with pytest.raises(LaunchError, match='no executable'):
        executable_module('av_td3_ros', 'no_such_node')


def _get_parameters(bridge, node_name, names):
    client = bridge.node.create_client(GetParameters, f'{node_name}/get_parameters')
    assert client.wait_for_service(timeout_sec=60.0)
    future = client.call_async(GetParameters.Request(names=names))
    assert bridge.spin_until(future.done, timeout=30.0)
    return [value for value in future.result().values]


def test_driver_runs_with_launch_parameters(start_node, tmp_path, rclpy_context):
    description, (driver,) = launch_nodes(start_node, tmp_path, REPO_LAUNCH / 'driver.launch.xml',
                                          allow_random_policy='true', use_sim_time='false',
                                          camera_topic='/cam/remapped', checkpoint='0123')
    (spec,) = description.nodes
    # Each later parameter file overrides the earlier ones (driver.yaml, then the expert's).
    file_values = {}
    for params_file in spec.param_files:
        file_values.update(load_params_file(params_file, 'driver'))
    bridge = FakeBridge(rclpy_context)
    try:
        node_name = f'{spec.namespace}/{spec.name}'
        names = sorted(set(file_values) - set(spec.params))
        values = _get_parameters(bridge, node_name, names)
        for name, value in zip(names, values, strict=True):
            actual = {1: value.bool_value, 2: value.integer_value, 3: value.double_value,
                      4: value.string_value}[value.type]
            assert actual == file_values[name], name
        (random_policy,) = _get_parameters(bridge, node_name, ['allow_random_policy'])
        assert random_policy.bool_value is True
        # type="str": a checkpoint name that YAML would read as an integer stays a string.
        (checkpoint,) = _get_parameters(bridge, node_name, ['checkpoint'])
        assert (checkpoint.type, checkpoint.string_value) == (4, '0123')
        assert driver.proc.poll() is None, driver.output()
        # The camera remapping took effect: the driver subscribes to the remapped topic.
        def subscribes_remapped():
            try:
                topics = bridge.node.get_subscriber_names_and_types_by_node(spec.name,
                                                                            spec.namespace)
            except RuntimeError:  # NodeNameNonExistentError: the graph lags behind the node
                return False
            return '/cam/remapped' in dict(topics)

        assert bridge.spin_until(subscribes_remapped, timeout=30.0), driver.output()
    finally:
        bridge.close()


def test_train_launch_passes_the_camera_topic_to_driver_and_trainer(start_node, tmp_path,
                                                                     rclpy_context):
    # The shipped trainer parameters with a small buffer: the default capacity reserves
    # about 0.7 GB of disk up front, which this test does not need.
    params = shipped_params(tmp_path, 'trainer', buffer_capacity=1000)
    description, nodes = launch_nodes(start_node, tmp_path, REPO_LAUNCH / 'train.launch.xml',
                                      run_dir=str(tmp_path / 'run'), use_sim_time='false',
                                      camera_topic='/cam/remapped', device='cpu',
                                      trainer_params_file=str(params))
    bridge = FakeBridge(rclpy_context)
    try:
        def subscribers():
            return {info.node_name
                    for info in bridge.node.get_subscriptions_info_by_topic('/cam/remapped')}

        wanted = {spec.name for spec in description.nodes}
        assert wanted == {'driver', 'trainer'}
        assert bridge.spin_until(lambda: subscribers() >= wanted, timeout=90.0), (
            subscribers(), [node.output()[-2000:] for node in nodes])
    finally:
        bridge.close()
