"""Declare ROS parameters with descriptions and ranges in one line each."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


class ParameterReader:
    """Declare-and-read helper: every parameter is read once, so it is declared read-only."""

    def __init__(self, node):
        """Wrap `node` (an rclpy Node)."""
        self.node = node

    def _get(self, name, default, descriptor):
        descriptor.read_only = True
        return self.node.declare_parameter(name, default, descriptor).value

    def string(self, name: str, default: str, description: str) -> str:
        """Declare and return a string parameter."""
        return self._get(name, default, ParameterDescriptor(description=description))

    def boolean(self, name: str, default: bool, description: str) -> bool:
        """Declare and return a bool parameter."""
        return self._get(name, default, ParameterDescriptor(description=description))

    def floating(self, name: str, default: float, description: str, low: float,
                 high: float) -> float:
        """Declare and return a float parameter limited to [low, high]."""
        descriptor = ParameterDescriptor(description=description, floating_point_range=[
            FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)])
        return float(self._get(name, float(default), descriptor))

    def integer(self, name: str, default: int, description: str, low: int, high: int) -> int:
        """Declare and return an integer parameter limited to [low, high]."""
        descriptor = ParameterDescriptor(description=description, integer_range=[
            IntegerRange(from_value=int(low), to_value=int(high), step=1)])
        return int(self._get(name, int(default), descriptor))

    def string_list(self, name: str, default: list[str], description: str) -> list[str]:
        """Declare and return a string-array parameter."""
        from rclpy.parameter import Parameter
        descriptor = ParameterDescriptor(description=description)
        descriptor.read_only = True
        value = self.node.declare_parameter(name, default or Parameter.Type.STRING_ARRAY,
                                            descriptor).value
        return list(value or [])


def read_policy_spec(p: ParameterReader):
    """Declare the parameters that must match a checkpoint and return them as a PolicySpec.

    The driver and the trainer share these names and defaults, so a trainer's checkpoints fit
    a driver started from the same parameter files.
    """
    from ..driving.features import FeatureConfig
    from ..driving.networks import NetworkConfig
    from ..driving.preprocessing import PreprocessConfig
    from ..learning.checkpoint import PolicySpec
    network = NetworkConfig(
        activation=p.string('activation', 'leaky_relu', 'CNN activation: leaky_relu, relu, '
                            'prelu (must match the checkpoint)'),
        negative_slope=p.floating('negative_slope', 0.01, 'LeakyReLU negative slope', 0.0, 1.0),
        feature_norm=p.string('feature_norm', 'none', 'after the CNN fc: none (the seed\'s '
                              'NatureCNN), layernorm or layernorm_tanh'),
        kinematic_dim=3 + 2 * p.integer('n_waypoints', 25, 'route waypoints in the kinematic '
                                        'vector', 1, 200))
    return PolicySpec(
        network=network,
        preprocessing=PreprocessConfig(
            scale=p.string('frame_scale', 'zero_centered', 'zero_centered ([-1, 1]) or unit '
                           '([0, 1])'),
            stack_fill=p.string('stack_fill', 'zero', 'frame stack at episode start: zero or '
                                'repeat_first')),
        features=FeatureConfig(n_waypoints=(network.kinematic_dim - 3) // 2))
