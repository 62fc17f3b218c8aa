"""Map policy actions to CARLA vehicle control values (no ROS imports)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from av_td3_ros.policy.features import clamp


@dataclass(frozen=True)
class ControlCommand:
    """The values of a carla_msgs/CarlaEgoVehicleControl, within its documented ranges."""

    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False

    @property
    def is_safe_stop(self) -> bool:
        """Return True for the full-brake command."""
        return self.brake >= 1.0 and self.throttle == 0.0


SAFE_STOP = ControlCommand(steer=0.0, throttle=0.0, brake=1.0)


def action_to_control(steer_action: float, accel_action: float) -> ControlCommand:
    """Map a = (steer, accel) in [-1, 1]^2 to a command; non-finite actions give SAFE_STOP.

    accel > 0 is throttle, otherwise brake = -accel (av_td3_system's mapping).
    """
    if not (math.isfinite(steer_action) and math.isfinite(accel_action)):
        return SAFE_STOP
    accel = clamp(float(accel_action), -1.0, 1.0)
    return ControlCommand(steer=clamp(float(steer_action), -1.0, 1.0),
                          throttle=accel if accel > 0.0 else 0.0,
                          brake=-accel if accel < 0.0 else 0.0)


def control_to_action(command: ControlCommand) -> tuple[float, float]:
    """Invert `action_to_control`: the action a driver applied (for training transitions)."""
    accel = command.throttle if command.throttle > 0.0 else -command.brake
    return clamp(command.steer, -1.0, 1.0), clamp(accel, -1.0, 1.0)
