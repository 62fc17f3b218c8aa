"""Declare a node's parameters from its schema (nodes/schema.py), with descriptions and ranges."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from av_td3_ros.nodes.schema import Schema

_EMPTY_ARRAY = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY}


def descriptor(param) -> ParameterDescriptor:
    """Return the read-only descriptor of `param`: every parameter is read once, at start."""
    result = ParameterDescriptor(description=param.description, read_only=True)
    if param.type is float and param.low is not None:
        result.floating_point_range = [FloatingPointRange(
            from_value=float(param.low), to_value=float(param.high), step=0.0)]
    elif param.type is int and param.low is not None:
        result.integer_range = [IntegerRange(from_value=int(param.low),
                                             to_value=int(param.high), step=1)]
    return result


def declare(node, schema: Schema) -> dict:
    """Declare every parameter of `schema` on `node` (an rclpy Node); return name -> value."""
    values = {}
    for param in schema:
        default = param.default_for(values)
        if param.type is list and not default:  # rclpy takes an empty array's type only
            default = _EMPTY_ARRAY[param.item_type]
        value = node.declare_parameter(param.name, default, descriptor(param)).value
        values[param.name] = list(value or []) if param.type is list else param.type(value)
    return values


def given(node) -> set[str]:
    """Return the names of the parameters set at start (params files, -p, launch <param>).

    rclpy (9.x) has no public accessor for them; its Node keeps them in
    `_parameter_overrides`, which its own declare_parameter reads.
    """
    return set(getattr(node, '_parameter_overrides', {}))
