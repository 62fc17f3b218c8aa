# Test the CARLA-side files: the objects file for carla_spawn_objects and the README's CARLA
# commands (CARLA cannot run here; these check them against the bridge's source facts).
import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Launch files of carla-simulator/ros-bridge (master) and the arguments they declare.
BRIDGE_LAUNCH_ARGS = {
    ('carla_ros_bridge', 'carla_ros_bridge.launch.py'): {
        'host', 'port', 'timeout', 'passive', 'synchronous_mode',
        'synchronous_mode_wait_for_vehicle_control_command', 'fixed_delta_seconds', 'town',
        'register_all_sensors', 'ego_vehicle_role_name'},
    ('carla_spawn_objects', 'carla_spawn_objects.launch.py'): {
        'objects_definition_file', 'spawn_point_ego_vehicle', 'spawn_sensors_only'},
    ('carla_waypoint_publisher', 'carla_waypoint_publisher.launch.py'): {
        'host', 'port', 'timeout', 'role_name'},
}


def objects():
    return json.loads((REPO / 'config' / 'carla_objects.json').read_text())['objects']


def test_objects_file_declares_what_driver_and_trainer_read():
    (vehicle,) = [obj for obj in objects() if obj['type'].startswith('vehicle.')]
    assert vehicle['id'] == 'ego_vehicle'  # the bridge uses the id as the role name
    sensors = {sensor['id']: sensor for sensor in vehicle['sensors']}
    # id -> type: topics are /carla/<role>/<id>/... (image, odometry, collision, ...)
    expected = {'rgb_front': 'sensor.camera.rgb', 'odometry': 'sensor.pseudo.odom',
                'collision': 'sensor.other.collision',
                'lane_invasion': 'sensor.other.lane_invasion', 'tf': 'sensor.pseudo.tf',
                'speedometer': 'sensor.pseudo.speedometer', 'control': 'actor.pseudo.control'}
    assert {key: sensors[key]['type'] for key in expected} == expected
    camera = sensors['rgb_front']
    # av_td3_system's camera: 256x144, FOV 90, 1.6 m ahead, 1.5 m up.
    assert (camera['image_size_x'], camera['image_size_y'], camera['fov']) == (256, 144, 90.0)
    assert (camera['spawn_point']['x'], camera['spawn_point']['z']) == (1.6, 1.5)
    for sensor in vehicle['sensors']:
        if sensor['type'].startswith(('sensor.camera', 'sensor.other')):
            assert {'x', 'y', 'z'} <= set(sensor['spawn_point'])


def carla_section():
    readme = (REPO / 'docs' / 'carla.md').read_text()
    start = readme.index('## CARLA quick start (ROS 2)')
    return readme[start:readme.index('\n## ', start + 1)]


def commands():
    for block in re.findall(r'```bash\n(.*?)```', carla_section(), re.S):
        for line in block.splitlines():
            line = line.split('  #')[0].strip()
            if line and not line.startswith('#'):
                yield line


def test_readme_carla_commands_can_be_pasted():
    lines = list(commands())
    assert len(lines) >= 10
    share = '$(ros2 pkg prefix av_td3_ros)/share/av_td3_ros/'
    for line in lines:
        assert not re.search(r'<[a-z ]+>', line), f'placeholder in {line!r}'
        for path in re.findall(re.escape(share) + r'(\S+)', line):
            assert (REPO / path).is_file(), path
        words = shlex.split(re.sub(r'\$\([^)]*\)', 'SUBST', line))
        if words[:2] != ['ros2', 'launch']:
            continue
        package, launch_file, *arguments = words[2:]
        names = {argument.split(':=')[0] for argument in arguments}
        if package == 'av_td3_ros':
            root = ET.parse(REPO / 'launch' / launch_file).getroot()
            declared = {arg.get('name') for arg in root.iter('arg')}
        else:
            declared = BRIDGE_LAUNCH_ARGS[(package, launch_file)]
        assert names <= declared, (line, names - declared)
    joined = '\n'.join(lines)
    for needed in ('--recurse-submodules', '--packages-up-to av_td3_ros',
                   'synchronous_mode_wait_for_vehicle_control_command:=True',
                   'carla_waypoint_publisher', '/carla/ego_vehicle/goal',
                   '--system-site-packages', 'vehicle_control_manual_override'):
        assert needed in joined or needed in carla_section(), needed


def test_carla_train_includes_the_bridge_launch_files_with_their_arguments(ros_env):
    from av_td3_ros.tools.launch_runner import LaunchError, parse_launch_file

    path = REPO / 'launch' / 'carla_train.launch.xml'
    includes = ET.parse(path).getroot().findall('include')
    assert len(includes) == 3
    for include in includes:
        package, launch_file = re.fullmatch(r'\$\(find-pkg-share (\w+)\)/([\w.]+)',
                                            include.get('file')).groups()
        names = {arg.get('name') for arg in include.findall('arg')}
        assert names <= BRIDGE_LAUNCH_ARGS[(package, launch_file)], (launch_file, names)
        assert include.get('if') == '$(var with_bridge)'
    values = {arg.get('name'): arg.get('value') for arg in includes[0].findall('arg')}
    assert values['synchronous_mode_wait_for_vehicle_control_command'] == 'True'
    # run_launch starts our three nodes when the bridge runs separately, and refuses to
    # pretend it can start the bridge.
    description = parse_launch_file(path, {'with_bridge': 'false'})
    assert sorted(spec.executable for spec in description.nodes) == [
        'carla_episode_manager', 'driver_node', 'trainer_node']
    with pytest.raises(LaunchError, match='carla_ros_bridge.launch.py'):
        parse_launch_file(path)


# Test if the shipped Town01 spawn-point file loads as the manager reads it: one goal per
# spawn point, all inside Town01 in the bridge's frame (y <= 0 there: CARLA's y is >= 0), no
# route shorter than a block, and headings along the town's axis-aligned roads.
def test_the_town01_spawn_point_file_loads_with_a_goal_per_spawn_point():
    from av_td3_ros.nodes.carla_episode_manager import read_spawn_file
    from av_td3_ros.task.episode_rules import EpisodeManagerConfig

    spawns, goals = read_spawn_file(str(REPO / 'config' / 'spawn_points_town01.yaml'))
    EpisodeManagerConfig(spawn_points=spawns, goals=goals)
    assert len(spawns) == len(goals) >= 3
    for pose in (*spawns, *goals):
        assert -5.0 <= pose.x <= 400.0 and -335.0 <= pose.y <= 5.0, pose
        assert pose.yaw % 90.0 == 0.0
    assert all(spawn.distance_to(goal.x, goal.y) > 20.0
               for spawn, goal in zip(spawns, goals, strict=True))
