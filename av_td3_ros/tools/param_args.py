"""Command-line options for a node's parameters: --params-file, -p NAME:=VALUE, one per name."""
from __future__ import annotations

from pathlib import Path

import yaml

from av_td3_ros.nodes.schema import ParameterError, load_params_file


def parse_value(text: str):
    """Parse a parameter value the way `-p name:=value` does (YAML scalars)."""
    return yaml.safe_load(text) if text != '' else ''


def add_param_options(parser, node: str, example: str, title: str, parameters: dict):
    """Add --params-file, -p and an option per parameter ({name: (default, description)})."""
    parser.add_argument('--params-file', type=Path,
                        help=f'{node} parameters YAML (e.g. {example})')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help=f'set a {node} parameter (repeatable)')
    group = parser.add_argument_group(title)
    for name, (default, description) in parameters.items():
        group.add_argument('--' + name.replace('_', '-'), dest='param_' + name,
                           type=parse_value, metavar=type(default).__name__.upper(),
                           help=f'{description} (default {default!r})')


def param_values(parsed, node: str, parameters) -> dict:
    """Return the values the command line sets: the params file, then -p, then the options."""
    values = load_params_file(parsed.params_file, node) if parsed.params_file else {}
    for item in parsed.param:
        name, sep, text = item.partition(':=')
        if not sep:
            raise ParameterError(f'-p expects NAME:=VALUE, got {item!r}')
        values[name] = parse_value(text)
    for name in parameters:
        value = getattr(parsed, 'param_' + name)
        if value is not None:
            values[name] = value
    values.pop('use_sim_time', None)  # a parameter of every node, not of the node's schema
    return values
