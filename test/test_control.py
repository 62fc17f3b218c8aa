"""Tests for the action <-> CARLA vehicle control mapping."""
import itertools
import math

import numpy as np
import pytest

from av_td3_ros.policy.control import (
    SAFE_STOP,
    ControlCommand,
    action_to_control,
    control_to_action,
)


def test_safe_stop_is_full_brake_and_nothing_else():
    assert SAFE_STOP == ControlCommand(steer=0.0, throttle=0.0, brake=1.0, hand_brake=False,
                                       reverse=False)
    assert SAFE_STOP.is_safe_stop
    assert not ControlCommand().is_safe_stop
    assert not ControlCommand(throttle=0.1, brake=1.0).is_safe_stop


@pytest.mark.parametrize('steer,accel,expected', [
    (0.5, 0.7, (0.5, 0.7, 0.0)),
    (-0.3, -0.4, (-0.3, 0.0, 0.4)),
    (0.0, 0.0, (0.0, 0.0, 0.0)),
    (-1.0, 1.0, (-1.0, 1.0, 0.0)),
    (1.0, -1.0, (1.0, 0.0, 1.0)),
])
def test_action_to_control_mapping(steer, accel, expected):
    command = action_to_control(steer, accel)
    assert (command.steer, command.throttle, command.brake) == pytest.approx(expected)
    assert command.hand_brake is False and command.reverse is False


@pytest.mark.parametrize('steer,accel,expected', [
    (2.0, 3.0, (1.0, 1.0, 0.0)),
    (-5.0, -5.0, (-1.0, 0.0, 1.0)),
    (1.0001, -1.5, (1.0, 0.0, 1.0)),
    (-1e9, 1e9, (-1.0, 1.0, 0.0)),
])
def test_action_to_control_clamps(steer, accel, expected):
    command = action_to_control(steer, accel)
    assert (command.steer, command.throttle, command.brake) == expected


@pytest.mark.parametrize('steer,accel', [
    (math.nan, 0.0), (0.0, math.nan), (math.inf, 0.5), (0.5, -math.inf), (math.nan, math.nan),
    (np.float32('nan'), np.float32(0.2)),
])
def test_non_finite_actions_give_safe_stop(steer, accel):
    assert action_to_control(steer, accel) is SAFE_STOP


def test_numpy_inputs_become_python_floats():
    # rclpy message float fields reject numpy float32; the command must hold plain floats.
    command = action_to_control(np.float32(0.25), np.float32(-0.5))
    for value in (command.steer, command.throttle, command.brake):
        assert type(value) is float
    assert (command.steer, command.throttle, command.brake) == (0.25, 0.0, 0.5)


def test_never_throttle_and_brake_together_and_all_in_range():
    grid = np.linspace(-1.5, 1.5, 31)
    for steer, accel in itertools.product(grid, grid):
        command = action_to_control(float(steer), float(accel))
        assert -1.0 <= command.steer <= 1.0
        assert 0.0 <= command.throttle <= 1.0 and 0.0 <= command.brake <= 1.0
        assert command.throttle == 0.0 or command.brake == 0.0


def test_inverse_mapping_round_trip():
    grid = np.linspace(-1.0, 1.0, 21)
    for steer, accel in itertools.product(grid, grid):
        back = control_to_action(action_to_control(float(steer), float(accel)))
        assert back == (pytest.approx(steer), pytest.approx(accel))


def test_inverse_mapping_of_clamped_and_external_commands():
    assert control_to_action(action_to_control(3.0, -2.0)) == (1.0, -1.0)
    assert control_to_action(SAFE_STOP) == (0.0, -1.0)
    assert control_to_action(ControlCommand(steer=-0.2, throttle=0.6)) == (-0.2, 0.6)
    # A human driver's command outside the ranges is clamped into the action box.
    assert control_to_action(ControlCommand(steer=1.7, brake=1.3)) == (1.0, -1.0)
