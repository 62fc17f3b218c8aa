"""Run an XML launch file's nodes without `ros2 launch` (for machines with ROS from PyPI).

Real ROS users run `ros2 launch av_td3_ros <file>`; this runner reads the same file and
starts the same nodes with the same parameter files, parameters and remappings, so a laptop
without launch_ros (and the test suite) exercises exactly what ships. Supported subset of
the launch XML format: <arg>, <let>, <set_env>, <node> with <param name value>,
<param from>, <remap>, and <group> with <push_ros_namespace>; substitutions $(var),
$(env NAME [default]), $(find-pkg-share pkg). Anything else is an error, never ignored.
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

SUBSTITUTION = re.compile(r'\$\((\S+)((?:\s+[^)]*)?)\)')


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


def find_package_share(package: str) -> str:
    """Return <prefix>/share/<package> from AMENT_PREFIX_PATH (like ament_index)."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        marker = Path(prefix, 'share', 'ament_index', 'resource_index', 'packages', package)
        if prefix and marker.exists():
            return str(Path(prefix, 'share', package))
    raise LaunchError(f'package {package!r} not found in AMENT_PREFIX_PATH '
                      f'({os.environ.get("AMENT_PREFIX_PATH", "unset")})')


def _to_param_value(text: str):
    """Type a launch <param value> like launch_ros does (YAML scalars; '' stays a string)."""
    if text == '':
        return ''
    value = yaml.safe_load(text)
    return value if isinstance(value, (bool, int, float, str, list)) else text


class _Parser:
    def __init__(self, arguments: dict[str, str]):
        self.given = dict(arguments)
        self.variables: dict[str, str] = {}
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

    def walk(self, element, namespace: str):
        for child in element:
            tag = child.tag
            if tag == 'arg':
                name = child.get('name')
                if name in self.given:
                    self.variables[name] = self.given.pop(name)
                elif child.get('default') is not None:
                    self.variables[name] = self.substitute(child.get('default'))
                else:
                    raise LaunchError(f'launch argument {name!r} has no default: pass '
                                      f'{name}:=<value>')
            elif tag == 'let':
                self.variables[child.get('name')] = self.substitute(child.get('value'))
            elif tag == 'set_env':
                self.environment[child.get('name')] = self.substitute(child.get('value'))
            elif tag == 'group':
                self.walk(child, namespace)
            elif tag == 'push_ros_namespace' or tag == 'push-ros-namespace':
                namespace = '/'.join(p for p in (namespace, self.substitute(
                    child.get('namespace'))) if p)
            elif tag == 'node':
                self.nodes.append(self.node(child, namespace))
            else:
                raise LaunchError(f'unsupported launch element <{tag}>')

    def node(self, element, namespace: str) -> NodeSpec:
        ns = self.substitute(element.get('namespace'))
        full_ns = '/'.join(p.strip('/') for p in (namespace, ns or '') if p and p.strip('/'))
        spec = NodeSpec(package=self.substitute(element.get('pkg')),
                        executable=self.substitute(element.get('exec')),
                        name=self.substitute(element.get('name')),
                        namespace='/' + full_ns if full_ns else None)
        extra = self.substitute(element.get('ros_args') or element.get('ros-args'))
        if extra:
            spec.ros_args = extra.split()
        for child in element:
            if child.tag == 'param' and child.get('from') is not None:
                spec.param_files.append(self.substitute(child.get('from')))
            elif child.tag == 'param':
                spec.params[child.get('name')] = _to_param_value(
                    self.substitute(child.get('value')))
            elif child.tag == 'remap':
                spec.remaps.append((self.substitute(child.get('from')),
                                    self.substitute(child.get('to'))))
            else:
                raise LaunchError(f'unsupported <node> child <{child.tag}>')
        return spec


def parse_launch_file(path: str | os.PathLike,
                      arguments: dict[str, str] | None = None) -> LaunchDescription:
    """Parse an XML launch file with `name:=value` arguments into node specs."""
    root = ET.parse(path).getroot()
    if root.tag != 'launch':
        raise LaunchError(f'{path}: root element is <{root.tag}>, expected <launch>')
    parser = _Parser(arguments or {})
    parser.walk(root, '')
    if parser.given:
        raise LaunchError(f'unknown launch arguments: {sorted(parser.given)}')
    return LaunchDescription(parser.nodes, parser.environment, parser.variables)


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
        """Start the node as `python -m <module> --ros-args ...`; echo its output if asked."""
        self.echo = echo
        self.spec = spec
        self.label = spec.name or spec.executable
        overrides = None
        if spec.params:
            overrides = str(workdir / f'{self.label}_{id(self)}_params.yaml')
            with open(overrides, 'w') as handle:
                yaml.safe_dump({'/**': {'ros__parameters': spec.params}}, handle)
        module = executable_module(spec.package, spec.executable)
        self.command = [sys.executable, '-m', module, *spec.ros_arguments(overrides)]
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        text=True, bufsize=1)
        self._pump = threading.Thread(target=self._forward, daemon=True)
        self._pump.start()

    def _forward(self):
        for line in self.process.stdout:
            if self.echo or 'ERROR' in line:
                sys.stdout.write(f'[{self.label}] {line}')
                sys.stdout.flush()

    def stop(self, timeout: float = 10.0):
        """SIGINT the node's process group; SIGKILL it if it does not exit in time."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._pump.join(timeout=2.0)


def launch(path: str | os.PathLike, arguments: dict[str, str],
           duration: float | None = None) -> int:
    """Start every node of a launch file; stop all when one exits, on SIGINT or after `duration`.

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
    values = {}
    for item in args.arguments:
        if ':=' not in item:
            parser.error(f'launch arguments look like name:=value, got {item!r}')
        key, value = item.split(':=', 1)
        values[key] = value
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
