"""Keep the old flat import paths working, with a DeprecationWarning naming the new one.

The modules moved into subpackages (`av_td3_ros.driver_node` is `av_td3_ros.nodes.driver`
now). MOVED is the one table of old -> new names; ModuleAliasFinder, installed on
sys.meta_path by av_td3_ros/__init__.py, answers imports of an old name with the new module
object itself (not a copy: one module state, and monkeypatching either name patches both),
and `python -m <old name>` runs the new module as __main__.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

PACKAGE = __package__

MOVED = {
    # driving/
    'preprocessing': 'driving.preprocessing',
    'features': 'driving.features',
    'networks': 'driving.networks',
    'inference': 'driving.inference',
    'inference_onnx': 'driving.inference_onnx',
    'pipeline': 'driving.pipeline',
    'control': 'driving.control',
    'driver_logic': 'driving.decision',
    'ros_conversions': 'driving.ros_conversions',
    # learning/
    'td3': 'learning.td3',
    'replay_buffer': 'learning.replay_buffer',
    'transitions': 'learning.transitions',
    'reward': 'learning.reward',
    'checkpoint': 'learning.checkpoint',
    'mc_returns': 'learning.mc_returns',
    'imitation': 'learning.imitation',
    'finetune': 'learning.finetune',
    'policy_transfer': 'learning.policy_transfer',
    # sim/
    'sim_env': 'sim.sim_env',
    'expert': 'sim.expert',
    'episode_manager': 'sim.episode_manager',
    'evaluation': 'sim.evaluation',
    # nodes/
    'driver_node': 'nodes.driver',
    'trainer_node': 'nodes.trainer',
    'sim_bridge_node': 'nodes.sim_bridge',
    'carla_episode_manager_node': 'nodes.carla_episode_manager',
    'policy_topic': 'nodes.policy_topic',
    'node_main': 'nodes.node_main',
    'node_params': 'nodes.node_params',
    'callback_guard': 'nodes.callback_guard',
    'watchdog': 'nodes.watchdog',
    'transport': 'nodes.transport',
    # tools/
    'bags': 'tools.bags',
    'bags.offline_eval': 'tools.bags.offline_eval',
    'bags.qos': 'tools.bags.qos',
    'bags.record': 'tools.bags.record',
    'bags.replay': 'tools.bags.replay',
    'bags.types': 'tools.bags.types',
    'plots': 'tools.plots',
    'importer': 'tools.importer',
    'launch_runner': 'tools.launch_runner',
    'demo': 'tools.demo',
    'evaluate_policy': 'tools.evaluate_policy',
    'train_imitation': 'tools.train_imitation',
    'finetune_policy': 'tools.finetune_policy',
}
"""Old module name -> new module name, both relative to the package."""


def new_name(old: str) -> str | None:
    """Return the new full name of the moved module `old` (a full name), or None."""
    prefix = PACKAGE + '.'
    moved = MOVED.get(old[len(prefix):]) if old.startswith(prefix) else None
    return None if moved is None else prefix + moved


def deprecation_message(old: str, new: str) -> str:
    """Return the warning for an import (or run) of `old`, which is `new` now."""
    return f'{old} is deprecated: the module moved to {new}'


_IMPORT_MACHINERY = os.path.dirname(importlib.__file__)


def _importer_stacklevel() -> int:
    """Return the warnings stacklevel, counted from the caller, of the importing frame.

    That is the first frame outside importlib and this module, so the warning names the
    user's import line (and the default filters show it when that line is in __main__).
    warnings.warn itself skips importlib's _bootstrap frames when it counts, so they are not
    counted here either.
    """
    frame, level = sys._getframe(1), 1
    while (frame := frame.f_back) is not None:
        filename = frame.f_code.co_filename
        if 'importlib' in filename and '_bootstrap' in filename:
            continue
        level += 1
        if filename != __file__ and os.path.dirname(filename) != _IMPORT_MACHINERY:
            break
    return level


class _AliasLoader(importlib.abc.Loader):
    """Load an old name as the module of its new name, and run it for `python -m`."""

    def __init__(self, new: str):
        self.new = new
        self._new_spec = None

    def create_module(self, spec):
        """Import the new module and hand it to the import system as the old name."""
        warnings.warn(deprecation_message(spec.name, self.new), DeprecationWarning,
                      stacklevel=_importer_stacklevel())
        module = importlib.import_module(self.new)
        self._new_spec = module.__spec__
        return module

    def exec_module(self, module):
        """Give the module back its own spec, which importing it as the old name replaced.

        The module already ran under its new name; only importlib's bookkeeping
        (module_from_spec sets __spec__ unconditionally) needs undoing.
        """
        module.__spec__ = self._new_spec

    def get_code(self, fullname):
        """Return the code `python -m <old name>` runs: a warning, then the new module.

        runpy runs this code as __main__; the new module then runs as __main__ under its own
        name, so its relative imports resolve from its new package.
        """
        source = ('import runpy, warnings\n'
                  f'warnings.warn({deprecation_message(fullname, self.new)!r}, '
                  'DeprecationWarning)\n'
                  f'runpy.run_module({self.new!r}, run_name="__main__", alter_sys=True)\n')
        return compile(source, f'<{fullname}: moved to {self.new}>', 'exec')


class ModuleAliasFinder(importlib.abc.MetaPathFinder):
    """Find the old names in MOVED (and only them) for the import system."""

    def find_spec(self, fullname, path=None, target=None):
        """Return a spec that loads `fullname`'s new module, or None when it did not move."""
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put one ModuleAliasFinder first on sys.meta_path (again and again: once).

    First, so that `av_td3_ros.bags.record` (whose old parent is the new package object) is
    answered here instead of being loaded a second time from tools/bags/ under its old name.
    """
    if not any(isinstance(finder, ModuleAliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ModuleAliasFinder())
