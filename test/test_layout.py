"""Tests of the package layout: layers import downward only, the core imports no rclpy."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'av_td3_ros'
LAYERS = ('', 'policy', 'experts', 'task', 'driving', 'sim', 'learning', 'nodes', 'tools')
"""Subpackages from the bottom up ('': the top-level helper modules). A module may import
its own layer and the layers below it, never one above."""
CORE = ('policy', 'experts', 'task', 'driving', 'sim', 'learning')


def module_names(subpackage):
    """Return the full names of every module in av_td3_ros.<subpackage>, from its files."""
    root = PACKAGE / subpackage
    names = []
    for path in sorted(root.rglob('*.py')):
        parts = path.relative_to(REPO).with_suffix('').parts
        names.append('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
    return names


def run_python(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, 'PYTHONPATH': str(REPO)})


# Test if importing every core module, in a fresh interpreter, leaves rclpy and ROS messages out.
def test_core_modules_import_no_rclpy():
    modules = [name for sub in CORE for name in module_names(sub)]
    assert len(modules) > 20
    script = ('import sys\n'
              f'for name in {modules!r}:\n'
              '    __import__(name)\n'
              'ros = sorted(name for name in sys.modules if name.split(".")[0] == "rclpy"\n'
              '             or name.split(".")[0].endswith(("_msgs", "_interfaces")))\n'
              'print(len([name for name in sys.modules if name.startswith("av_td3_ros.")]))\n'
              'print(ros)\n')
    result = run_python('-c', script)
    assert result.returncode == 0, result.stderr
    count, ros = result.stdout.split('\n')[:2]
    assert int(count) >= len(modules)
    assert ros == '[]', f'the core pulled in {ros}'


# Test if bag_eval reads the driver's parameters without rclpy (it runs without DDS).
def test_bag_eval_reads_driver_parameters_without_rclpy():
    script = ('import sys\n'
              'from av_td3_ros.tools.bags import offline_eval\n'
              'assert "role_name" in offline_eval.driver_parameters()\n'
              'print(sorted(name for name in sys.modules if name.split(".")[0] == "rclpy"))\n')
    result = run_python('-c', script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


# Test if no core module mentions rclpy in an import, not even a lazy one inside a function.
@pytest.mark.parametrize('subpackage', CORE)
def test_core_source_has_no_rclpy_import(subpackage):
    for path in (PACKAGE / subpackage).rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [node.module or '']
            else:
                continue
            assert not [name for name in imported if name.split('.')[0] == 'rclpy'], path


# Test if setup.py installs every folder of Python modules (find_packages needs __init__.py).
def test_every_subpackage_is_installed():
    setup = (REPO / 'setup.py').read_text()
    assert "find_packages(include=[package_name, package_name + '.*'])" in setup
    for path in PACKAGE.rglob('*.py'):
        for folder in path.relative_to(PACKAGE).parents:
            assert (PACKAGE / folder / '__init__.py').is_file(), f'{folder} is not a package'


def layer_of(module: str) -> str:
    """Return the layer of `av_td3_ros.<layer>.<...>` ('' for a top-level module)."""
    parts = module.split('.')
    return parts[1] if len(parts) > 2 else ''


def is_module(name: str) -> bool:
    """Return True if `name` is a module or package of the repo (not a class or function)."""
    path = REPO / name.replace('.', '/')
    return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def package_imports() -> dict[str, set[str]]:
    """Return each package module's av_td3_ros imports (lazy and type-checking ones too)."""
    graph = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(REPO).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f'{path}: relative import (write av_td3_ros.<...>)')
            if isinstance(node, ast.ImportFrom):
                names = [node.module or '']
                names += [f'{node.module}.{alias.name}' for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            imported |= {n for n in names if n.startswith('av_td3_ros.') and is_module(n)}
        graph[name] = imported
    return graph


# Test if every import goes to the module's own layer or one below (so the subpackage graph
# is acyclic), and if the checker itself sees an upward import.
def test_layers_import_downward_only():
    assert {path.name for path in PACKAGE.iterdir() if (path / '__init__.py').is_file()} \
        == set(LAYERS) - {''}
    upward = []
    for module, imported in sorted(package_imports().items()):
        rank = LAYERS.index(layer_of(module))
        upward += [f'{module} -> {target}' for target in sorted(imported)
                   if LAYERS.index(layer_of(target)) > rank]
    assert upward == [], 'imports that go up a layer: ' + '; '.join(upward)
    assert LAYERS.index(layer_of('av_td3_ros.learning.td3')) \
        > LAYERS.index(layer_of('av_td3_ros.policy.networks'))
    assert layer_of('av_td3_ros.validation') == ''


# Test if the driver process loads no learning code (critic, optimiser state, replay).
def test_the_driver_imports_no_learning_code():
    script = ('import sys\n'
              'import av_td3_ros.nodes.driver\n'
              'import av_td3_ros.tools.bags.offline_eval\n'
              'print(sorted(n for n in sys.modules if n.startswith("av_td3_ros.learning")))\n')
    result = run_python('-c', script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
