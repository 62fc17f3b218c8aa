"""Tests of the package layout: the core imports no rclpy, old module names still work."""
import ast
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from av_td3_ros._moved import MOVED, deprecation_message

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'av_td3_ros'
CORE = ('driving', 'learning', 'sim')


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


# Test if the table of moved modules names real new modules and no leftover old files.
def test_moved_table_points_at_existing_modules():
    for old, new in MOVED.items():
        assert not (PACKAGE / (old.replace('.', '/') + '.py')).exists(), old
        new_path = PACKAGE / new.replace('.', '/')
        assert new_path.with_suffix('.py').is_file() or (new_path / '__init__.py').is_file()


# Test if an old name imports the new module object itself and warns with the new name.
@pytest.mark.parametrize('old', sorted(MOVED))
def test_old_name_is_the_new_module_with_a_warning(old, monkeypatch):
    old_name, new_name = f'av_td3_ros.{old}', f'av_td3_ros.{MOVED[old]}'
    new = importlib.import_module(new_name)
    monkeypatch.delitem(sys.modules, old_name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        aliased = importlib.import_module(old_name)
    assert aliased is new
    assert new.__name__ == new.__spec__.name == new_name  # its own name and spec, untouched
    assert sys.modules[old_name] is new
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)
                    and new_name in str(w.message)]
    assert [str(w.message) for w in deprecations] == [deprecation_message(old_name, new_name)]
    assert deprecations[0].filename == __file__  # blames the importer, not importlib


# Test if `from av_td3_ros import <old>` and old submodules of the moved bags package work.
def test_old_from_imports(monkeypatch):
    import av_td3_ros
    for name in ('av_td3_ros.node_main', 'av_td3_ros.bags', 'av_td3_ros.bags.types'):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in ('node_main', 'bags'):
        monkeypatch.delattr(av_td3_ros, name, raising=False)
    with pytest.warns(DeprecationWarning, match='av_td3_ros.nodes.node_main'):
        from av_td3_ros import node_main
    from av_td3_ros.nodes import node_main as new
    assert node_main is new
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        from av_td3_ros.bags.types import typestore
    from av_td3_ros.tools.bags.types import typestore as new_typestore
    assert typestore is new_typestore
    assert [str(w.message).rsplit(' ', 1)[-1] for w in caught] == [
        'av_td3_ros.tools.bags', 'av_td3_ros.tools.bags.types']


# Test if an unknown name still fails like any missing module.
def test_unmoved_missing_name_is_not_found():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module('av_td3_ros.no_such_module')


# Test if `python -m <old name>` runs the new module as __main__, after a warning.
@pytest.mark.parametrize('old, usage', [('demo', 'usage: demo.py'),
                                        ('bags.offline_eval', 'usage: bag_eval')])
def test_python_m_old_name_runs_the_new_module(old, usage):
    result = run_python('-m', f'av_td3_ros.{old}', '--help')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)
    assert f'DeprecationWarning: av_td3_ros.{old} is deprecated: the module moved to ' \
           f'av_td3_ros.{MOVED[old]}' in result.stderr
