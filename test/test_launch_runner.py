# Test run_launch's launch_xml subset: typed params, conditions, respawn, and refusals.
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from helpers import REPO_LAUNCH

from av_td3_ros.tools.launch_runner import LaunchError, _to_param_value, parse_launch_file

LAUNCH_FILES = sorted(REPO_LAUNCH.glob('*.launch.xml'))


def write_launch(tmp_path, body, name='t.launch.xml'):
    path = tmp_path / name
    path.write_text(f'<?xml version="1.0"?>\n<launch>\n{body}\n</launch>\n')
    return path


@pytest.mark.parametrize('text, type_name, expected', [
    ('0123', 'str', '0123'),       # YAML would read the octal integer 83
    ('0123', None, 83),            # launch's default: YAML rules
    ('true', 'str', 'true'),
    ('', 'str', ''),
    ('', None, ''),
    ('7', 'int', 7),
    ('7', 'float', 7.0),
    ('True', 'bool', True),
    ('false', 'bool', False),
    ('[a, b]', 'list_of_str', ['a', 'b']),
    ('[1.0, 2.5]', 'list_of_float', [1.0, 2.5]),
    ('abc', 'yaml', 'abc'),
])
def test_param_types_follow_launch_ros(text, type_name, expected):
    value = _to_param_value(text, type_name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize('text, type_name', [
    ('abc', 'int'), ('1.5', 'int'), ('maybe', 'bool'), ('0', 'bool'), ('[1, x]', 'list_of_int'),
    ('[1, 2.5]', 'list_of_float'), ('a', 'list_of_str'), ('1', 'string'),
])
def test_param_type_mismatch_is_an_error(text, type_name):
    with pytest.raises(LaunchError, match='type'):
        _to_param_value(text, type_name)


def test_string_arguments_stay_strings_in_every_launch_file(ros_env):
    # checkpoint:=0123 used to reach the driver as the integer 83 and kill it.
    for launch_file in LAUNCH_FILES:
        declared = {arg.get('name') for arg in ET.parse(launch_file).getroot().iter('arg')}
        arguments = {'role_name': '007'}
        if 'with_bridge' in declared:
            arguments['with_bridge'] = 'false'
        if 'checkpoint' in declared:
            arguments['checkpoint'] = '0123'
        description = parse_launch_file(launch_file, arguments)
        for spec in description.nodes:
            assert spec.params.get('role_name', '007') == '007', (launch_file.name, spec.name)
            if 'checkpoint' in arguments and spec.executable == 'driver_node':
                assert spec.params['checkpoint'] == '0123'
            if 'vehicles' in spec.params:
                assert spec.params['vehicles'] == ['007']
            # What LaunchedNode writes for the node must read back with the same types.
            dumped = yaml.safe_load(yaml.safe_dump(spec.params))
            assert dumped == spec.params


@pytest.mark.parametrize('launch_file', LAUNCH_FILES, ids=lambda p: p.name)
def test_every_param_is_typed_and_every_arg_described(launch_file):
    root = ET.parse(launch_file).getroot()
    for arg in root.iter('arg'):
        if arg.get('value') is None:  # a declaration, not an <include>'s argument
            assert arg.get('description'), f'<arg name="{arg.get("name")}"> has no description'
    for param in root.iter('param'):
        if param.get('from') is None:
            assert param.get('type'), f'<param name="{param.get("name")}"> has no type'


def test_use_sim_time_description_is_right():
    for launch_file in LAUNCH_FILES:
        for arg in ET.parse(launch_file).getroot().iter('arg'):
            if arg.get('name') == 'use_sim_time':
                assert 'own node only' in arg.get('description')


def test_if_and_unless_select_nodes(tmp_path, ros_env):
    path = write_launch(tmp_path, '''
  <arg name="with_trainer" default="false" description="d"/>
  <node pkg="av_td3_ros" exec="driver_node" name="a" if="true"/>
  <node pkg="av_td3_ros" exec="driver_node" name="b" if="false"/>
  <node pkg="av_td3_ros" exec="trainer_node" name="c" if="$(var with_trainer)"/>
  <node pkg="av_td3_ros" exec="driver_node" name="d" unless="$(var with_trainer)"/>
  <group if="false"><node pkg="av_td3_ros" exec="driver_node" name="e"/></group>
  <set_env name="X" value="1" unless="1"/>
  <let name="v" value="1" if="0"/>''')
    description = parse_launch_file(path)
    assert [spec.name for spec in description.nodes] == ['a', 'd']
    assert description.environment == {}
    assert 'v' not in description.arguments
    description = parse_launch_file(path, {'with_trainer': 'True'})
    assert [spec.name for spec in description.nodes] == ['a', 'c']


def test_disabled_includes_are_skipped_without_resolving_them(tmp_path, ros_env):
    path = write_launch(tmp_path, '''
  <arg name="with_bridge" default="true" description="d"/>
  <include file="$(find-pkg-share no_such_package)/x.launch.py" if="$(var with_bridge)">
    <arg name="town" value="Town01"/>
  </include>
  <node pkg="av_td3_ros" exec="driver_node" name="a"/>''')
    assert [spec.name for spec in parse_launch_file(path, {'with_bridge': 'false'}).nodes] == [
        'a']
    with pytest.raises(LaunchError, match='cannot run <include'):
        parse_launch_file(path)


def test_condition_that_is_not_a_boolean_is_an_error(tmp_path):
    path = write_launch(tmp_path, '<node pkg="av_td3_ros" exec="driver_node" if="yes"/>')
    with pytest.raises(LaunchError, match="<node if>: 'yes'"):
        parse_launch_file(path)


def test_node_attributes(tmp_path):
    path = write_launch(tmp_path, '''
  <node pkg="av_td3_ros" exec="sim_bridge" name="sim" exec_name="stand_in" output="log"
        respawn="true" respawn_delay="2.5" args="--flag x" ros_args="--log-level debug">
    <param name="seed" value="3" type="int"/>
  </node>''')
    (spec,) = parse_launch_file(path).nodes
    assert (spec.exec_name, spec.output, spec.respawn, spec.respawn_delay) == (
        'stand_in', 'log', True, 2.5)
    assert spec.args == ['--flag', 'x'] and spec.ros_args == ['--log-level', 'debug']
    assert spec.params == {'seed': 3}


def test_group_scopes_arguments_and_namespace(tmp_path):
    path = write_launch(tmp_path, '''
  <let name="role" value="outer"/>
  <group>
    <push_ros_namespace namespace="fleet"/>
    <let name="role" value="inner"/>
    <node pkg="av_td3_ros" exec="driver_node" name="a">
      <param name="role_name" value="$(var role)" type="str"/>
    </node>
  </group>
  <node pkg="av_td3_ros" exec="driver_node" name="b">
    <param name="role_name" value="$(var role)" type="str"/>
  </node>''')
    a, b = parse_launch_file(path).nodes
    assert (a.namespace, a.params['role_name']) == ('/fleet', 'inner')
    assert (b.namespace, b.params['role_name']) == (None, 'outer')


@pytest.mark.parametrize('body, message', [
    ('<node pkg="av_td3_ros" exec="driver_node" launch-prefix="gdb"/>',
     "unsupported attribute 'launch-prefix' on <node>"),
    ('<arg name="x" default="1" type="str"/>', "unsupported attribute 'type' on <arg>"),
    ('<node pkg="av_td3_ros" exec="driver_node"><param name="a" value="1" if="true"/></node>',
     "unsupported attribute 'if' on <param> in <node>"),
    ('<node pkg="av_td3_ros" exec="driver_node"><env name="A" value="1"/></node>',
     'unsupported launch element <env> in <node>'),
    ('<include file="other.launch.py"/>', 'cannot run <include file="other.launch.py">'),
    ('<include file="a.launch.py" if="true"><arg name="x" value="1" if="1"/></include>',
     "unsupported attribute 'if' on <arg> in <include>"),
    ('<include file="a.launch.py" if="false" scoped="true"/>',
     "unsupported attribute 'scoped' on <include>"),
    ('<executable cmd="ls"/>', 'unsupported launch element <executable>'),
    ('<param name="a" value="1"/>', 'unsupported launch element <param> in <launch>'),
    ('<node pkg="av_td3_ros" exec="driver_node" output="own_log"/>', 'output="own_log"'),
    ('<node pkg="av_td3_ros" exec="driver_node" respawn="often"/>', '<node respawn>'),
    ('<node pkg="av_td3_ros"/>', "<node> needs a 'exec' attribute"),
    ('<node pkg="av_td3_ros" exec="driver_node"><param from="f.yaml" name="x"/></node>',
     '<param from> takes no name'),
    ('<set_env name="A" value="$(command ls)"/>', r'unsupported substitution \$\(command'),
])
def test_unimplemented_launch_features_are_refused(tmp_path, body, message):
    with pytest.raises(LaunchError, match=message):
        parse_launch_file(write_launch(tmp_path, body))


def test_respawn_restarts_an_exited_node(tmp_path, start_tool):
    # run_launch started as a node exits at once (it does not take --ros-args): the runner
    # must restart it rather than stop, and stop it cleanly on Ctrl-C.
    path = write_launch(tmp_path, '''
  <node pkg="av_td3_ros" exec="run_launch" exec_name="quitter" respawn="true"
        respawn_delay="0.1" output="screen"/>''')
    runner = start_tool('av_td3_ros.tools.launch_runner', str(path))

    def respawns():
        return runner.output().count('quitter exited (2); respawning in 0.1 s')

    deadline = time.monotonic() + 90.0
    while respawns() < 2 and runner.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert respawns() >= 2, runner.output()
    assert 'stopping the others' not in runner.output()
    assert runner.interrupt() == 0, runner.output()


def test_a_node_without_respawn_stops_the_launch(tmp_path, start_tool):
    path = write_launch(tmp_path, '<node pkg="av_td3_ros" exec="run_launch" name="quitter"/>')
    runner = start_tool('av_td3_ros.tools.launch_runner', str(path))
    assert runner.wait(timeout=60.0) == 2, runner.output()
    assert 'quitter exited (2); stopping the others' in runner.output()


def test_print_lists_the_nodes_of_a_launch_file(tmp_path, start_tool, ros_env):
    runner = start_tool('av_td3_ros.tools.launch_runner', str(REPO_LAUNCH / 'driver.launch.xml'),
                        'checkpoint:=0123', '--print')
    assert runner.wait(timeout=60.0) == 0, runner.output()
    assert "'checkpoint': '0123'" in runner.output()


def _children(pid):
    """Return the ids of the living processes whose parent is `pid`."""
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
        fields = stat.rsplit(')', 1)[-1].split()  # the name in parentheses may hold spaces
        if fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _alive(pid):
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != 'Z'  # a zombie no longer runs (its new parent reaps it)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux')
def test_nodes_die_with_a_killed_runner(tmp_path, start_tool):
    # A SIGKILLed runner cleans nothing up: its nodes must still not outlive it (orphans
    # would keep publishing on the domain).
    path = write_launch(tmp_path, '''
  <node pkg="av_td3_ros" exec="carla_episode_manager" name="orphan_probe_a"/>
  <node pkg="av_td3_ros" exec="carla_episode_manager" name="orphan_probe_b"/>''')
    runner = start_tool('av_td3_ros.tools.launch_runner', str(path))
    deadline = time.monotonic() + 60.0
    while len(_children(runner.proc.pid)) < 2 and time.monotonic() < deadline:
        assert runner.proc.poll() is None, runner.output()
        time.sleep(0.1)
    nodes = _children(runner.proc.pid)
    assert len(nodes) == 2, runner.output()
    try:
        os.kill(runner.proc.pid, signal.SIGKILL)  # the runner only, not the nodes' groups
        runner.proc.wait(timeout=10.0)
        deadline = time.monotonic() + 30.0
        while any(_alive(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in nodes), runner.output()
    finally:
        for pid in nodes:  # only the two this test started, if the check failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
