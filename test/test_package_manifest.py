# Test that package.xml declares a resolvable rosdep key for everything the code imports.
import ast
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]

# Keys checked by hand against rosdistro (rosdep/python.yaml, and the packages of the Humble,
# Jazzy and Kilted distribution.yaml files), 2026-12-01. A new key must be checked there too.
ROSDEP_KEYS = {
    'python3-numpy', 'python3-opencv', 'python3-yaml', 'python3-torch', 'python3-rosbags-pip',
    'python3-matplotlib', 'python3-tensorboard-pip', 'python3-gymnasium-pip',
    'python3-pygame', 'python3-pytest', 'python3-pytest-timeout', 'python3-hypothesis',
    'python3-catkin-pkg-modules', 'python3-onnxruntime-pip',
}
ROS_PACKAGES = {
    'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'std_msgs', 'std_srvs', 'geometry_msgs',
    'sensor_msgs', 'nav_msgs', 'rosgraph_msgs', 'visualization_msgs', 'diagnostic_msgs',
    'launch_xml', 'launch_ros',
    'carla_msgs',  # from the ros-bridge workspace (carla-simulator/ros-carla-msgs)
}
# Top-level module -> the key that provides it; None: no rosdep key (docs/carla.md says how
# to install it with pip).
MODULE_KEYS = {
    'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml',
    'torch': 'python3-torch', 'rosbags': 'python3-rosbags-pip',
    'matplotlib': 'python3-matplotlib', 'tensorboard': 'python3-tensorboard-pip',
    'gymnasium': 'python3-gymnasium-pip', 'pygame': 'python3-pygame',
    'safetensors': None, 'Box2D': None,
    'pytest': 'python3-pytest', 'hypothesis': 'python3-hypothesis',
    'catkin_pkg': 'python3-catkin-pkg-modules', 'onnxruntime': 'python3-onnxruntime-pip',
}
NO_KEY = {'safetensors', 'Box2D',
          # Imported only by sim/metadrive_worker.py, in MetaDrive's own venv
          # (scripts/setup.sh --metadrive), never in the package's environment.
          'metadrive', 'panda3d'}
# The MetaDrive worker runs by file path (av_td3_ros is not installed in its venv) and imports
# its sibling modules by file name: they are this package's own, not dependencies.
WORKER_SIBLINGS = {'metadrive_expert'}


def package():
    return parse_package(str(REPO / 'package.xml'))


def imported_modules(paths):
    """Return the top-level modules imported by the Python files under `paths`."""
    modules = set()
    for path in paths:
        for source in sorted(Path(path).rglob('*.py')):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split('.')[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split('.')[0])
    return modules - set(sys.stdlib_module_names) - {'av_td3_ros', '__future__'} - WORKER_SIBLINGS


def test_manifest_is_valid_format_3():
    manifest = package()
    manifest.validate()
    assert manifest.package_format == 3
    assert manifest.name == 'av_td3_ros'
    assert manifest.get_build_type() == 'ament_python'


def test_every_dependency_is_a_known_key():
    manifest = package()
    keys = {dep.name for dep in manifest.exec_depends + manifest.test_depends}
    assert keys - ROSDEP_KEYS - ROS_PACKAGES == set()
    assert 'torch' not in keys  # not a rosdep key; python3-torch is


def test_torch_needs_2_4():
    (torch,) = [dep for dep in package().exec_depends if dep.name == 'python3-torch']
    assert torch.version_gte == '2.4'  # fused Adam on the CPU


def test_every_imported_module_has_its_dependency():
    manifest = package()
    exec_keys = {dep.name for dep in manifest.exec_depends}
    test_keys = {dep.name for dep in manifest.test_depends}
    runtime = imported_modules([REPO / 'av_td3_ros'])
    for module in sorted(runtime):
        if module in ROS_PACKAGES or module in NO_KEY:
            continue
        assert module in MODULE_KEYS, f'{module}: add its rosdep key to package.xml and here'
        assert MODULE_KEYS[module] in exec_keys, f'{module} needs <exec_depend>'
    test_helpers = {path.stem for path in (REPO / 'test').glob('*.py')}
    for module in sorted(imported_modules([REPO / 'test']) - runtime - test_helpers):
        if module in ROS_PACKAGES or module in NO_KEY:
            continue
        assert module in MODULE_KEYS, f'{module}: add its rosdep key to package.xml and here'
        assert MODULE_KEYS[module] in exec_keys | test_keys, f'{module} needs <test_depend>'
    assert {'python3-pytest', 'python3-pytest-timeout'} <= test_keys


def test_keys_without_rosdep_are_documented():
    readme = (REPO / 'docs' / 'carla.md').read_text()
    manifest_text = (REPO / 'package.xml').read_text()
    for name in ('safetensors', 'gymnasium[box2d]', 'onnx'):
        assert name in readme and name in manifest_text


def test_share_directory_holds_every_launch_and_config_file(ros_env):
    # Under `colcon test` this is colcon's install space; in the venv, scripts/setup.sh's.
    from av_td3_ros.tools.launch_runner import find_package_share

    share = Path(find_package_share('av_td3_ros'))
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()
    for folder in ('launch', 'config'):
        for source in sorted((REPO / folder).iterdir()):
            installed = share / folder / source.name
            assert installed.is_file(), f'{installed} missing: add it to setup.py data_files'
            assert installed.read_bytes() == source.read_bytes(), f'{installed} is stale'
