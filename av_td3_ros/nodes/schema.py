"""Parameter schemas: each parameter's name, type, default, description and range, once.

A node's parameters are one `Schema` next to its config dataclass. Where a core config
dataclass holds the value, the default is read from it (`Param.of`), so it is written in one
place. Nodes declare from the schema (`node_params.declare`); bag_eval and train_offline check
YAML values with `Schema.read`.

Pure Python, no rclpy: bag_eval and the tests use it without DDS.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from av_td3_ros.experts.route_expert import ExpertConfig
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.features import FeatureConfig
from av_td3_ros.policy.networks import NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig


class ParameterError(ValueError):
    """A parameter value of the wrong type, out of range, or a name no schema declares."""


@dataclass(frozen=True)
class Param:
    """One read-only ROS parameter.

    The default fixes the type (bool, int, float, str, or a list of str or float; an empty
    list names its item type in `items`). A callable default is computed from the values
    read before it (e.g. topic names under role_name). `low`/`high` bound int and float
    values, as rclpy does with the descriptor's range.
    """

    name: str
    default: object
    description: str
    low: float | None = None
    high: float | None = None
    items: type | None = None

    @classmethod
    def of(cls, config_cls, name: str, description: str, low=None, high=None,
           field: str | None = None) -> Param:
        """Return parameter `name` whose default is dataclass `config_cls`'s `field` (`name`)."""
        (found,) = [f for f in dataclasses.fields(config_cls) if f.name == (field or name)]
        if found.default is dataclasses.MISSING:
            raise TypeError(f'{config_cls.__name__}.{found.name} has no default')
        return cls(name, found.default, description, low, high)

    def default_for(self, values: dict):
        """Return the default given the values of the parameters read before this one."""
        return self.default(values) if callable(self.default) else self.default

    @property
    def type(self) -> type:
        """Return the value type: bool, int, float, str or list."""
        return type(self.default_for(_ROLE_DEFAULTS))

    @property
    def item_type(self) -> type | None:
        """Return the item type of a list parameter (None for scalars)."""
        if self.type is not list:
            return None
        return self.items or type(self.default_for(_ROLE_DEFAULTS)[0])

    def check(self, value):
        """Return `value` as this parameter's type; raise ParameterError if it is not one.

        An int is accepted for a float (YAML writes 1 for 1.0), a bool never for an int.
        """
        kind = self.type
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ParameterError(f'parameter {self.name}: expected {kind.__name__}, '
                                 f'got {value!r}')
        if kind is list:
            item = self.item_type
            if item is float:
                value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                         for v in value]
            if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                raise ParameterError(f'parameter {self.name}: expected a list of '
                                     f'{item.__name__}, got {value!r}')
        if self.low is not None and not self.low <= value <= self.high:
            raise ParameterError(f'parameter {self.name}={value} outside [{self.low}, '
                                 f'{self.high}]')
        return value


_ROLE_DEFAULTS = {'role_name': 'ego_vehicle'}
"""What a computed default sees when only its type is asked for."""


class Schema:
    """The ordered parameters of one node."""

    def __init__(self, node: str, *params: Param | Iterable[Param]):
        """Collect `params` (single ones or groups) for the node named `node`."""
        self.node = node
        self.params: dict[str, Param] = {}
        for item in params:
            for param in ([item] if isinstance(item, Param) else item):
                if param.name in self.params:
                    raise ValueError(f'parameter {param.name} declared twice')
                self.params[param.name] = param

    def __iter__(self):
        """Iterate over the parameters in declaration order."""
        return iter(self.params.values())

    def __getitem__(self, name: str) -> Param:
        """Return the parameter `name`."""
        return self.params[name]

    def defaults(self) -> dict:
        """Return every parameter's default (computed ones from the other defaults)."""
        return self.read({})

    def read(self, given: dict) -> dict:
        """Return the values for `given` (name -> value) and the defaults for the rest.

        Checks names, types and ranges as rclpy would; raise ParameterError naming the
        problem.
        """
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ParameterError(f'unknown {self.node} parameters {unknown}')
        values = {}
        for param in self:
            value = given[param.name] if param.name in given else param.default_for(values)
            values[param.name] = param.check(value)
        return values


POLICY_SPEC = (
    Param.of(NetworkConfig, 'activation',
             'CNN activation: leaky_relu, relu, prelu (must match the checkpoint)'),
    Param.of(NetworkConfig, 'negative_slope', 'LeakyReLU negative slope', 0.0, 1.0),
    Param.of(NetworkConfig, 'feature_norm',
             "after the CNN fc: none (the seed's NatureCNN), layernorm or layernorm_tanh"),
    Param.of(FeatureConfig, 'n_waypoints', 'route waypoints in the kinematic vector', 1, 200),
    Param.of(PreprocessConfig, 'frame_scale', 'zero_centered ([-1, 1]) or unit ([0, 1])',
             field='scale'),
    Param.of(PreprocessConfig, 'stack_fill', 'frame stack at episode start: zero or '
             'repeat_first'),
)
"""The parameters that must match a checkpoint; the driver and the trainer share them, so a
trainer's checkpoints fit a driver started from the same parameter files."""

SPEC_FIELDS = {
    'activation': (('network', 'activation'),),
    'negative_slope': (('network', 'negative_slope'),),
    'feature_norm': (('network', 'feature_norm'),),
    'n_waypoints': (('network', 'kinematic_dim'), ('features', 'n_waypoints')),
    'frame_scale': (('preprocessing', 'scale'),),
    'stack_fill': (('preprocessing', 'stack_fill'),),
}
"""The PolicySpec fields (section, field) each policy-spec parameter sets."""


def policy_spec(values: dict) -> PolicySpec:
    """Return the PolicySpec the policy-spec parameters in `values` describe."""
    n_waypoints = values['n_waypoints']
    return PolicySpec(
        network=NetworkConfig(activation=values['activation'],
                              negative_slope=values['negative_slope'],
                              feature_norm=values['feature_norm'],
                              kinematic_dim=3 + 2 * n_waypoints),
        preprocessing=PreprocessConfig(scale=values['frame_scale'],
                                       stack_fill=values['stack_fill']),
        features=FeatureConfig(n_waypoints=n_waypoints))


EXPERT_PREFIX = 'expert.'
EXPERT = tuple(Param.of(ExpertConfig, EXPERT_PREFIX + name, description, low, high, field=name)
               for name, description, low, high in (
    ('lookahead_min', 'shortest pure-pursuit lookahead (m)', 0.0, 1e3),
    ('lookahead_base', 'lookahead at standstill before the minimum applies (m)', 0.0, 1e3),
    ('lookahead_gain', 'extra lookahead per m/s of speed (s)', 0.0, 100.0),
    ('wheelbase', "the vehicle's axle distance (m)", 0.1, 100.0),
    ('max_wheel_angle', 'front wheel angle at full steer (rad)', 0.01, 1.57),
    ('preview_distance', 'route length ahead whose curves limit the speed (m)', 0.0, 1e4),
    ('curvature_window', 'arc length over which curvature is measured (m)', 0.1, 1e3),
    ('lateral_accel', 'lateral acceleration allowed in curves (m/s^2)', 0.01, 100.0),
    ('braking_decel', 'deceleration planned before a curve (m/s^2)', 0.01, 100.0),
    ('max_speed', 'target speed on straights (m/s)', 0.01, 200.0),
    ('speed_gain', 'throttle per m/s below the target speed', 0.0, 100.0),
    ('brake_gain', 'brake per m/s above the target speed', 0.0, 100.0),
    ('max_brake', 'strongest brake command', 0.0, 1.0),
    ('off_road_deviation', 'distance from the route beyond which it recovers (m)', 0.0, 1e3),
    ('recovery_speed', 'target speed while recovering (m/s)', 0.0, 200.0),
    ('recovery_throttle', 'throttle cap while recovering', 0.0, 1.0)))
"""The route expert's settings (`ExpertConfig`, defaults: the stand-in; CARLA's:
config/expert_carla.yaml). The driver drives with them in expert and dagger modes and the
trainer labels with them, so both are set from one file."""


def expert_config(values: dict) -> ExpertConfig:
    """Return the ExpertConfig the expert.* parameters in `values` describe."""
    return ExpertConfig(**{p.name[len(EXPERT_PREFIX):]: values[p.name] for p in EXPERT})


ROUTE_SPACING = Param('route_spacing', 0.0, 'resample each route every this many metres of arc '
                      'length before the kinematic vector is built (CARLA plans every 1 m, the '
                      'stand-in every 3.5 m); 0: as received', 0.0, 1e3)


def same_named(config_cls, values: dict) -> dict:
    """Return the entries of `values` named like a field of dataclass `config_cls`."""
    return {f.name: values[f.name] for f in dataclasses.fields(config_cls) if f.name in values}


def load_params_file(path, node_name: str) -> dict:
    """Return the ros__parameters for `node_name` (and `/**`) of a ROS params YAML file.

    Nested mappings become dotted names, as rclpy reads them (`expert: {max_speed: 8.3}` is
    `expert.max_speed`).
    """
    content = yaml.safe_load(Path(path).read_text()) or {}
    values = {}
    for key, section in content.items():
        if key == '/**' or key.rstrip('/').rsplit('/', 1)[-1] == node_name:
            values.update(_flatten((section or {}).get('ros__parameters', {})))
    return values


def _flatten(section: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat
