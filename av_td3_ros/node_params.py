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
