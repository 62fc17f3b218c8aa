"""Write every node's ROS parameters as Markdown tables, from the node schemas.

Prints the tables; `--write` puts each into its docs/ page between `<!-- params:<node> begin
-->` and `<!-- params:<node> end -->`; `--check` exits 1 when one is stale. The schemas
(`nodes/schema.py`) are the one place a parameter is written.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

# node -> (module, schema attribute, docs page). Modules are imported only when a table is
# made: the bridges and carla_episode_manager import rclpy.
TABLES = {
    'driver': ('av_td3_ros.nodes.driver_config', 'DRIVER', 'docs/driver.md'),
    'trainer': ('av_td3_ros.nodes.trainer_config', 'TRAINER', 'docs/training.md'),
    'sim_bridge': ('av_td3_ros.nodes.sim_bridge', 'SIM_BRIDGE', 'docs/stand-in.md'),
    'metadrive_bridge': ('av_td3_ros.nodes.metadrive_bridge', 'METADRIVE_BRIDGE',
                         'docs/metadrive.md'),
    'carla_episode_manager': ('av_td3_ros.nodes.carla_episode_manager', 'EPISODE_MANAGER',
                              'docs/carla.md'),
}
ROLE_SHOWN = '<role_name>'  # what a default computed from role_name shows


def _schema(node: str):
    module, attribute, _ = TABLES[node]
    return getattr(importlib.import_module(module), attribute)


def _value(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'  # as the YAML files write it
    if isinstance(value, list):
        return '[' + ', '.join(_value(item) for item in value) + ']'
    if isinstance(value, str):
        return repr(value) if value == '' else value
    return repr(value)


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def table(node: str) -> str:
    """Return the Markdown table of `node`'s parameters (name, type, default, range, text)."""
    schema = _schema(node)
    defaults = schema.defaults()
    shown = {**defaults, 'role_name': ROLE_SHOWN}
    rows = ['| parameter | type | default | range | description |',
            '|---|---|---|---|---|']
    for param in schema:
        default = param.default_for(shown) if callable(param.default) else param.default
        kind = param.type.__name__
        if param.item_type is not None:
            kind = f'list of {param.item_type.__name__}'
        bounds = '' if param.low is None else f'{_value(param.low)} to {_value(param.high)}'
        rows.append(f'| `{param.name}` | {kind} | `{_cell(_value(default))}` | {bounds} '
                    f'| {_cell(param.description)} |')
    return '\n'.join(rows) + '\n'


def rewritten(node: str, text: str) -> str:
    """Return page `text` with `node`'s table between its markers replaced by the current one.

    Raise ValueError when the page lacks the markers (a table nobody can find is stale).
    """
    begin, end = f'<!-- params:{node} begin -->\n', f'<!-- params:{node} end -->'
    pattern = re.compile(re.escape(begin) + '.*?' + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f'no {begin.strip()} ... {end} markers')
    # A function replacement: the table's backslashes must not be read as group references.
    return pattern.sub(lambda _: begin + table(node) + end, text, count=1)


def stale(root: Path) -> list[str]:
    """Return the docs pages under `root` whose generated tables differ from the schemas."""
    found = []
    for node, (_, _, page) in TABLES.items():
        text = (root / page).read_text()
        if rewritten(node, text) != text:
            found.append(f'{page} ({node})')
    return found


def write(root: Path) -> list[str]:
    """Rewrite the stale tables under `root`; return the pages changed."""
    changed = stale(root)
    for node, (_, _, page) in TABLES.items():
        path = root / page
        path.write_text(rewritten(node, path.read_text()))
    return changed


def main(argv=None) -> int:
    """Print, write or check the parameter tables; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument('--write', action='store_true', help='rewrite the tables in docs/')
    action.add_argument('--check', action='store_true', help='exit 1 if a table is stale')
    parser.add_argument('--root', type=Path, default=Path.cwd(),
                        help='repository root holding docs/ (default: the current directory)')
    args = parser.parse_args(argv)
    if args.write:
        for page in write(args.root):
            print(f'rewrote {page}')
        return 0
    if args.check:
        pages = stale(args.root)
        for page in pages:
            print(f'stale: {page}; run python -m av_td3_ros.tools.param_docs --write',
                  file=sys.stderr)
        return 1 if pages else 0
    for node in TABLES:
        print(f'## {node}\n\n{table(node)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
