"""Tests of the privileged MetaDrive expert: conflict prediction, braking, labels in a world.

The `metadrive` test runs MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes
and fails without it; `-m "not metadrive"` leaves it out.
"""
import math

import pytest

from av_td3_ros.sim import metadrive_expert as expert
from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveConfig, default_python


# Test if a car crossing ahead is a conflict, and a car behind or far away is not.
def test_first_conflict_sees_crossing_traffic_only():
    # ego at the origin heading +x at 8 m/s; a car 16 m ahead, 12 m to the side, crossing
    crossing = ((16.0, -12.0), (0.0, 6.0))
    when = expert.first_conflict((0.0, 0.0), 0.0, 8.0, [crossing])
    assert when is not None and 1.0 <= when <= 3.0
    behind = ((-5.0, 0.0), (10.0, 0.0))
    far = ((80.0, 0.0), (0.0, 0.0))
    parallel = ((0.0, 10.0), (8.0, 0.0))  # the next lane over, same speed
    assert expert.first_conflict((0.0, 0.0), 0.0, 8.0, [behind, far, parallel]) is None
    # the heading matters: the same car is no conflict when the ego car drives away from it
    assert expert.first_conflict((0.0, 0.0), math.pi, 8.0, [crossing]) is None


# Test if a conflict caps IDM's acceleration by a brake, harder when it is near.
def test_yielding_acceleration_brakes_for_conflicts():
    assert expert.yielding_acceleration(0.7, None) == 0.7
    assert expert.yielding_acceleration(0.7, 2.5) == -0.5
    assert expert.yielding_acceleration(0.7, 0.5) == -1.0
    assert expert.yielding_acceleration(-0.8, 2.5) == -0.8  # IDM's own harder brake stays


# Test if MetaDrive's [steering, acceleration] becomes CARLA's command (steer sign flipped).
def test_carla_command_from_metadrive_action():
    assert expert.carla_command([0.3, 0.5]) == (-0.3, 0.5, 0.0)
    assert expert.carla_command([-2.0, -0.4]) == (1.0, 0.0, 0.4)


# Test if the expert labels every state and drives a short seeded scenario in traffic
# without a crash or leaving the road.
@pytest.mark.metadrive
def test_expert_labels_and_drives_in_traffic(tmp_path):
    assert default_python().is_file(), (
        'no MetaDrive venv: run `bash scripts/setup.sh --metadrive`, or deselect with '
        '-m "not metadrive"')
    client = MetaDriveClient(MetaDriveConfig(image_width=32, image_height=24, expert=True,
                                             run_dir=str(tmp_path), max_episode_steps=80))
    try:
        state = client.reset(9500)
        start = (state.x, state.y)
        while not state.done:
            assert state.expert is not None and len(state.expert) == 3
            state = client.step_expert()
        assert state.end == ('truncated', 'time_limit'), state.end
        assert math.hypot(state.x - start[0], state.y - start[1]) > 20.0
    finally:
        client.close()
