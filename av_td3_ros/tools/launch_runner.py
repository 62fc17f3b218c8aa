"""Run an XML launch file's nodes without `ros2 launch` (for machines with ROS from PyPI).

It starts the same nodes with the same parameter files, parameters and remappings as
`ros2 launch av_td3_ros <file>`, so a laptop without launch_ros (and the tests) run what ships.
Implemented, with launch_xml's meaning: <arg>, <let>, <set_env>, <group>, <push_ros_namespace>,
<include> only when its condition disables it, <node> with <param> (value, type, value-sep,
from) and <remap> children; `if`/`unless` on every element; substitutions $(var), $(env NAME
[default]), $(find-pkg-share pkg). Without `type` a <param> value is typed as YAML (so
`checkpoint:=0123` would be the integer 83). Anything else is an error naming it, never
ignored: a file this runner cannot start faithfully does not start at all.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from av_td3_ros.tools.child_process import ChildProcess

SUBSTITUTION = re.compile(r'\$\((\S+)((?:\s+[^)]*)?)\)')
CONDITIONS = ('if', 'unless')
# The attributes (besides `if` and `unless`) and children each element may have here.
ATTRIBUTES = {
    'launch': set(),
    'arg': {'name', 'default', 'description'},
    'let': {'name', 'value'},
    'set_env': {'name', 'value'},
    'group': set(),
    'push_ros_namespace': {'namespace'},
    'push-ros-namespace': {'namespace'},
    'node': {'pkg', 'exec', 'name', 'namespace', 'output', 'respawn', 'respawn_delay',
             'exec_name', 'args', 'ros_args', 'ros-args'},
    'param': {'name', 'value', 'value-sep', 'type', 'from'},
    'remap': {'from', 'to'},
    'include': {'file'},
    'include_arg': {'name', 'value'},
}
ACTIONS = {'arg', 'let', 'set_env', 'group', 'push_ros_namespace', 'push-ros-namespace', 'node',
           'include'}
CHILDREN = {None: {'launch'}, 'launch': ACTIONS, 'group': ACTIONS, 'node': {'param', 'remap'},
            'include': {'arg'}}
# launch's get_data_type_from_identifier: the `type` values a <param> may carry.
PARAM_TYPES = {'str': str, 'int': int, 'float': float, 'bool': bool,
               'list_of_str': str, 'list_of_int': int, 'list_of_float': float,
               'list_of_bool': bool, 'yaml': None}
OUTPUTS = ('screen', 'log', 'both')


class LaunchError(ValueError):
    """A launch file this runner cannot start faithfully."""


@dataclass
class NodeSpec:
    """One <node> of a launch file, with every substitution resolved."""

    package: str
    executable: str
    name: str | None = None
    namespace: str | None = None
    params: dict = field(default_factory=dict)
    param_files: list[str] = field(default_factory=list)
    remaps: list[tuple[str, str]] = field(default_factory=list)
    ros_args: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)  # node arguments before --ros-args
    output: str = 'log'  # launch's default: the process's output goes to the log only
    respawn: bool = False
    respawn_delay: float = 0.0
    exec_name: str | None = None  # the label of the process's output lines

    def ros_arguments(self, overrides_file: str | None = None) -> list[str]:
        """Return the `--ros-args ...` list equivalent to this node's launch description."""
        args = ['--ros-args']
        if self.name:
            args += ['-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:={self.namespace}']
        for path in self.param_files:
            args += ['--params-file', path]
        if overrides_file:
            args += ['--params-file', overrides_file]
        for source, target in self.remaps:
            args += ['-r', f'{source}:={target}']
        return args + self.ros_args


@dataclass
class LaunchDescription:
    """Nodes and environment described by one launch file."""

    nodes: list[NodeSpec]
    environment: dict[str, str]
    arguments: dict[str, str]
    descriptions: dict[str, str] = field(default_factory=dict)  # argument -> description


def find_package_share(package: str) -> str:
    """Return <prefix>/share/<package> from AMENT_PREFIX_PATH (like ament_index)."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        marker = Path(prefix, 'share', 'ament_index', 'resource_index', 'packages', package)
        if prefix and marker.exists():
            return str(Path(prefix, 'share', package))
    raise LaunchError(f'package {package!r} not found in AMENT_PREFIX_PATH '
                      f'({os.environ.get("AMENT_PREFIX_PATH", "unset")})')


def _yaml_value(text: str):
    """Type a value by YAML rules like launch_ros (an empty string stays a string)."""
    if text == '':
        return ''
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise LaunchError(f'cannot read {text!r} as YAML: {error}') from None
    return value if isinstance(value, (bool, int, float, str, list)) else text


def _to_param_value(text: str, type_name: str | None = None):
    """Type a <param value> like launch_ros does, honouring its `type` attribute."""
    if type_name is None or type_name == 'yaml':
        return _yaml_value(text)
    if type_name not in PARAM_TYPES:
        raise LaunchError(f'<param type="{type_name}">: unknown type (launch accepts '
                          f'{", ".join(PARAM_TYPES)})')
    scalar = PARAM_TYPES[type_name]
    if type_name.startswith('list_of_'):
        items = _yaml_value(text)
        if not isinstance(items, list) or not all(_is_exactly(item, scalar) for item in items):
            raise LaunchError(f'<param type="{type_name}">: {text!r} is not such a list')
        return items
    if scalar is str:
        return text
    if scalar is bool:
        value = _yaml_value(text)
        if not isinstance(value, bool):  # launch reads YAML here: 0 and 1 are integers
            raise LaunchError(f'<param type="bool">: {text!r} is not true or false')
        return value
    try:
        return scalar(text)
    except ValueError:
        raise LaunchError(f'<param type="{type_name}">: {text!r} is not an {type_name}'
                          ) from None


def _is_exactly(value, scalar) -> bool:
    """Return whether a YAML item has the list type's item type (launch: no int for float)."""
    if scalar is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, scalar)


def _truth(text: str, where: str) -> bool:
    """Evaluate a condition or boolean attribute like launch (true/1, false/0)."""
    value = text.strip().lower()
    if value in ('true', '1'):
        return True
    if value in ('false', '0'):
        return False
    raise LaunchError(f'{where}: {text!r} is neither true/1 nor false/0')


class _Parser:
    def __init__(self, arguments: dict[str, str]):
        self.given = dict(arguments)
        self.variables: dict[str, str] = {}
        self.descriptions: dict[str, str] = {}
        self.environment: dict[str, str] = {}
        self.nodes: list[NodeSpec] = []

    def substitute(self, text: str | None) -> str | None:
        if text is None:
            return None

        def replace(match):
            kind, rest = match.group(1), match.group(2).split()
            if kind == 'var':
                if rest[0] not in self.variables:
                    raise LaunchError(f'undefined launch argument {rest[0]!r}')
                return self.variables[rest[0]]
            if kind == 'env':
                default = rest[1] if len(rest) > 1 else None
                value = self.environment.get(rest[0], os.environ.get(rest[0], default))
                if value is None:
                    raise LaunchError(f'environment variable {rest[0]} is not set')
                return value
            if kind == 'find-pkg-share':
                return find_package_share(rest[0])
            raise LaunchError(f'unsupported substitution $({kind} ...)')

        previous = None
        while previous != text:  # substitutions may produce substitutions
            previous, text = text, SUBSTITUTION.sub(replace, text)
        return text

    @staticmethod
    def check(element, parent: str | None):
        """Refuse an element, attribute or child this runner does not implement."""
        tag = element.tag
        where = f'<{tag}> in <{parent}>' if parent else f'<{tag}>'
        if tag not in CHILDREN[parent]:
            raise LaunchError(f'unsupported launch element {where} (run_launch implements '
                              f'{", ".join(sorted(CHILDREN[parent]))} there)')
        key = 'include_arg' if (parent, tag) == ('include', 'arg') else tag
        allowed = ATTRIBUTES[key] | (set(CONDITIONS) if key in ACTIONS else set())
        for attribute in element.attrib:
            if attribute not in allowed:
                raise LaunchError(f'unsupported attribute {attribute!r} on {where} '
                                  f'(run_launch implements: {", ".join(sorted(allowed))})')

    def required(self, element, attribute: str) -> str:
        return self.substitute(self.required_raw(element, attribute))

    def enabled(self, element) -> bool:
        """Evaluate the element's `if` / `unless` conditions."""
        for attribute, wanted in (('if', True), ('unless', False)):
            text = element.get(attribute)
            if text is not None and _truth(self.substitute(text),
                                           f'<{element.tag} {attribute}>') != wanted:
                return False
        return True

    def walk(self, element, namespace: str):
        for child in element:
            self.check(child, element.tag)
            if not self.enabled(child):
                continue
            tag = child.tag
            if tag == 'arg':
                name = self.required(child, 'name')
                if child.get('description') is not None:
                    self.descriptions[name] = child.get('description')
                if name in self.given:
                    self.variables[name] = self.given.pop(name)
                elif child.get('default') is not None:
                    self.variables[name] = self.substitute(child.get('default'))
                else:
                    raise LaunchError(f'launch argument {name!r} has no default: pass '
                                      f'{name}:=<value>')
            elif tag == 'let':
                self.variables[self.required(child, 'name')] = self.required(child, 'value')
            elif tag == 'set_env':
                self.environment[self.required(child, 'name')] = self.required(child, 'value')
            elif tag == 'group':
                saved = dict(self.variables)  # launch scopes a group's launch configurations
                self.walk(child, namespace)
                self.variables = saved
            elif tag in ('push_ros_namespace', 'push-ros-namespace'):
                namespace = '/'.join(p for p in (namespace, self.required(
                    child, 'namespace')) if p)
            elif tag == 'node':
                self.nodes.append(self.node(child, namespace))
            elif tag == 'include':
                for arg in child:
                    self.check(arg, 'include')
                # Another launch file (often a .launch.py of another package) is ros2 launch's
                # job; a file run here must leave its includes disabled (`if`/`unless`).
                raise LaunchError(f'run_launch cannot run <include file="{child.get("file")}">'
                                  ': use ros2 launch, or disable the include (its if/unless '
                                  'argument) and start that part separately')

    def node(self, element, namespace: str) -> NodeSpec:
        ns = self.substitute(element.get('namespace'))
        full_ns = '/'.join(p.strip('/') for p in (namespace, ns or '') if p and p.strip('/'))
        spec = NodeSpec(package=self.required(element, 'pkg'),
                        executable=self.required(element, 'exec'),
                        name=self.substitute(element.get('name')),
                        namespace='/' + full_ns if full_ns else None,
                        exec_name=self.substitute(element.get('exec_name')))
        spec.ros_args = (self.substitute(element.get('ros_args') or element.get('ros-args'))
                         or '').split()
        spec.args = (self.substitute(element.get('args')) or '').split()
        output = self.substitute(element.get('output'))
        if output is not None:
            if output not in OUTPUTS:
                raise LaunchError(f'<node output="{output}">: run_launch implements '
                                  f'{", ".join(OUTPUTS)}')
            spec.output = output
        respawn = self.substitute(element.get('respawn'))
        if respawn is not None:
            spec.respawn = _truth(respawn, '<node respawn>')
        delay = self.substitute(element.get('respawn_delay'))
        if delay is not None:
            spec.respawn_delay = float(_to_param_value(delay, 'float'))
        for child in element:
            self.check(child, 'node')
            if child.tag == 'param' and child.get('from') is not None:
                if {'name', 'value', 'type'} & set(child.attrib):
                    raise LaunchError('<param from> takes no name, value or type')
                spec.param_files.append(self.substitute(child.get('from')))
            elif child.tag == 'param':
                spec.params[self.required(child, 'name')] = self.param_value(child)
            else:
                spec.remaps.append((self.required(child, 'from'),
                                    self.required(child, 'to')))
        return spec

    def param_value(self, element):
        """Return a <param>'s typed value; `value-sep` splits it (before substitution)."""
        type_name = self.substitute(element.get('type'))
        separator = element.get('value-sep')
        if separator is None:
            return _to_param_value(self.required(element, 'value'), type_name)
        if type_name not in (None, 'yaml') and not type_name.startswith('list_of_'):
            raise LaunchError(f'<param value-sep> needs a list type, not {type_name!r}')
        item_type = None if type_name in (None, 'yaml') else type_name[len('list_of_'):]
        return [_to_param_value(self.substitute(item), item_type)
                for item in self.required_raw(element, 'value').split(separator)]

    @staticmethod
    def required_raw(element, attribute: str) -> str:
        value = element.get(attribute)
        if value is None:
            raise LaunchError(f'<{element.tag}> needs a {attribute!r} attribute')
        return value


def parse_launch_file(path: str | os.PathLike,
                      arguments: dict[str, str] | None = None) -> LaunchDescription:
    """Parse an XML launch file with `name:=value` arguments into node specs."""
    root = ET.parse(path).getroot()
    parser = _Parser(arguments or {})
    _Parser.check(root, None)
    parser.walk(root, '')
    if parser.given:
        raise LaunchError(f'unknown launch arguments: {sorted(parser.given)}')
    return LaunchDescription(parser.nodes, parser.environment, parser.variables,
                             parser.descriptions)


def executable_module(package: str, executable: str) -> str:
    """Return the module whose main() backs `ros2 run <package> <executable>`."""
    for entry in metadata.entry_points(group='console_scripts'):
        if entry.name == executable and entry.module.split('.')[0] == package:
            return entry.module
    raise LaunchError(f'no executable {executable!r} in package {package!r} '
                      '(is av_td3_ros installed? run scripts/setup.sh)')


def resolve_launch_path(name: str) -> Path:
    """Accept a path or a file name under share/av_td3_ros/launch."""
    path = Path(name)
    if path.exists():
        return path
    return Path(find_package_share('av_td3_ros'), 'launch', name)


class LaunchedNode:
    """A running node process whose output is prefixed with its name."""

    def __init__(self, spec: NodeSpec, env: dict[str, str], workdir: Path,
                 echo: bool = True):
        """Start the node as `python -m <module> --ros-args ...`.

        Its output is echoed with `echo` and output screen or both; else only ERROR lines.
        """
        self.echo = echo and spec.output in ('screen', 'both')
        self.spec = spec
        self.label = spec.exec_name or spec.name or spec.executable
        overrides = None
        if spec.params:
            overrides = str(workdir / f'{self.label}_{id(self)}_params.yaml')
            with open(overrides, 'w') as handle:
                yaml.safe_dump({'/**': {'ros__parameters': spec.params}}, handle)
        module = executable_module(spec.package, spec.executable)
        self.command = [sys.executable, '-m', module, *spec.args,
                        *spec.ros_arguments(overrides)]
        self.child = ChildProcess(self.command, env=env, stdout=subprocess.PIPE, text=True)
        self.process = self.child.process
        self._pump = threading.Thread(target=self._forward, daemon=True)
        self._pump.start()

    def _forward(self):
        for line in self.process.stdout:
            if self.echo or 'ERROR' in line:
                sys.stdout.write(f'[{self.label}] {line}')
                sys.stdout.flush()

    def stop(self, timeout: float = 10.0):
        """SIGINT the node's process group; SIGKILL it if it does not exit in time."""
        self.child.stop(timeout)
        self._pump.join(timeout=2.0)


def launch(path: str | os.PathLike, arguments: dict[str, str],
           duration: float | None = None) -> int:
    """Start every node of a launch file; stop all on SIGINT, after `duration`, or when one exits.

    A node with `respawn` is restarted `respawn_delay` seconds after it exits instead.
    Returns the first non-zero exit status of a node that stopped by itself, else 0.
    """
    description = parse_launch_file(path, arguments)
    env = dict(os.environ, **description.environment, PYTHONUNBUFFERED='1')
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    nodes = []
    status = 0
    with tempfile.TemporaryDirectory(prefix='av_td3_launch_') as workdir:
        try:
            for spec in description.nodes:
                nodes.append(LaunchedNode(spec, env, Path(workdir)))
            deadline = None if duration is None else time.monotonic() + duration
            while not stop.is_set():
                exited = [n for n in nodes if n.process.poll() is not None]
                for node in [n for n in exited if n.spec.respawn]:
                    print(f'[run_launch] {node.label} exited ({node.process.returncode}); '
                          f'respawning in {node.spec.respawn_delay:g} s', flush=True)
                    node.stop()
                    if stop.wait(node.spec.respawn_delay):
                        break
                    nodes[nodes.index(node)] = LaunchedNode(node.spec, env, Path(workdir))
                exited = [n for n in exited if not n.spec.respawn]
                if exited:
                    status = next((n.process.returncode for n in exited
                                   if n.process.returncode), 0)
                    print(f'[run_launch] {exited[0].label} exited '
                          f'({exited[0].process.returncode}); stopping the others', flush=True)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                stop.wait(0.2)
        finally:
            for node in reversed(nodes):
                node.stop()
            signal.signal(signal.SIGINT, previous)
    return status


def main(argv=None) -> int:
    """Run the command line: run_launch <file> [name:=value ...] [--duration S]."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('launch_file', help='path, or a file name in share/av_td3_ros/launch')
    parser.add_argument('arguments', nargs='*', help='launch arguments name:=value')
    parser.add_argument('--duration', type=float, default=None,
                        help='stop all nodes after this many seconds')
    parser.add_argument('--print', action='store_true', dest='print_only',
                        help='print the node command lines and exit')
    args = parser.parse_args(argv)
    for item in (item for item in args.arguments if ':=' not in item):
        parser.error(f'launch arguments look like name:=value, got {item!r}')
    values = dict(item.split(':=', 1) for item in args.arguments)
    try:
        path = resolve_launch_path(args.launch_file)
        if args.print_only:
            description = parse_launch_file(path, values)
            for key, value in description.environment.items():
                print(f'export {key}={value}')
            for spec in description.nodes:
                print(executable_module(spec.package, spec.executable), spec.params,
                      ' '.join(spec.ros_arguments()))
            return 0
        return launch(path, values, args.duration)
    except LaunchError as error:
        print(f'run_launch: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
