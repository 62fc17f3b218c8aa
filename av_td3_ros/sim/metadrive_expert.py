"""A privileged MetaDrive expert: IDM that also yields to traffic crossing its path.

Runs inside the MetaDrive worker (`metadrive_worker.py`, MetaDrive's own venv), so it
imports only the standard library and numpy at module level and metadrive inside functions.

MetaDrive's IDMPolicy follows cars in its own lane only; 6 of its 8 crashes on seeds
9500-9519 were with vehicles crossing at intersections (docs/metadrive.md). This expert
takes IDM's steering and acceleration, then predicts every vehicle within 50 m that is not
behind the ego car at constant velocity for `HORIZON` s, against the ego car going straight
on at its speed; when any comes within `GAP` m it brakes (hard when the conflict is under
`HARD_BRAKE_WITHIN` s away). It reads the simulator's vehicles and lanes (privileged), and
labels any state the ego car is in, whoever drives it (DAgger): `act()` needs only the
current state and its own PID memory.
"""
from __future__ import annotations

import math

import numpy as np

HORIZON = 3.0
"""Seconds of constant-velocity prediction."""
STEP = 0.25
"""Seconds between predicted instants."""
GAP = 6.0
"""Metres between predicted centres that count as a conflict (chosen on seeds 9500-9549)."""
HARD_BRAKE_WITHIN = 1.5
"""A conflict sooner than this many seconds brakes fully, a later one half."""
SCAN_RADIUS = 50.0
"""Vehicles farther than this (m) are ignored."""


def first_conflict(ego_xy, ego_heading: float, ego_speed: float, others) -> float | None:
    """Return the first predicted instant (s) a vehicle in `others` comes within GAP, or None.

    `others` holds (position xy, velocity xy) pairs in MetaDrive's frame. A vehicle more than
    1 m behind the ego car (along its heading) is left to avoid the ego car itself.
    """
    p0 = np.asarray(ego_xy, float)
    heading = np.array([math.cos(ego_heading), math.sin(ego_heading)])
    ego_velocity = heading * max(float(ego_speed), 1.0)
    times = np.arange(0.0, HORIZON + 1e-9, STEP)[:, None]
    first = None
    for position, velocity in others:
        rel = np.asarray(position, float) - p0
        if np.hypot(*rel) > SCAN_RADIUS or rel @ heading < -1.0:
            continue
        gaps = np.hypot(*(rel + (np.asarray(velocity, float) - ego_velocity) * times).T)
        hits = np.nonzero(gaps < GAP)[0]
        if hits.size:
            when = float(times[hits[0], 0])
            first = when if first is None else min(first, when)
    return first


def yielding_acceleration(idm_acceleration: float, conflict: float | None) -> float:
    """Return IDM's acceleration, capped by a brake when a conflict is predicted."""
    if conflict is None:
        return idm_acceleration
    return min(idm_acceleration, -1.0 if conflict < HARD_BRAKE_WITHIN else -0.5)


def carla_command(action) -> tuple[float, float, float]:
    """Return CARLA's (steer, throttle, brake) for MetaDrive's [steering, acceleration]."""
    steer = min(max(-float(action[0]), -1.0), 1.0)
    pedal = min(max(float(action[1]), -1.0), 1.0)
    return steer, max(pedal, 0.0), max(-pedal, 0.0)


def make_expert(vehicle, seed: int):
    """Return a yielding IDM policy controlling (or labelling) `vehicle`."""
    from metadrive.policy.idm_policy import IDMPolicy

    class YieldingIDM(IDMPolicy):
        """IDMPolicy plus braking for predicted conflicts with any nearby vehicle."""

        def act(self, *args, **kwargs):
            """Return [steering, acceleration] in MetaDrive's convention."""
            steering, acceleration = super().act(*args, **kwargs)
            ego = self.control_object
            others = [(v.position, v.velocity) for v in self.engine.traffic_manager.vehicles
                      if v is not ego]
            conflict = first_conflict(ego.position, ego.heading_theta, ego.speed, others)
            return [steering, yielding_acceleration(acceleration, conflict)]

    return YieldingIDM(control_object=vehicle, random_seed=seed)
