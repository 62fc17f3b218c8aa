"""Tests of the MetaDrive worker protocol and client (plain pytest, no ROS).

The `metadrive` tests run MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes
(scripts/test.sh does): without it they fail, saying so. `-m "not metadrive"` skips them.
"""
import io
import math
import os
import signal

import numpy as np
import pytest
from helpers import require_metadrive_venv

from av_td3_ros.sim import metadrive_worker as worker
from av_td3_ros.sim.metadrive_client import (
    MetaDriveClient,
    MetaDriveConfig,
    clip_command,
    command_problem,
)

SEED = 5
SMALL = dict(image_width=48, image_height=32, max_episode_steps=60)


@pytest.fixture(scope='module')
def client(tmp_path_factory):
    """Yield one MetaDrive client (one worker) shared by this module's tests."""
    require_metadrive_venv()
    made = MetaDriveClient(MetaDriveConfig(run_dir=str(tmp_path_factory.mktemp('md')),
                                           **SMALL))
    yield made
    made.close()


def drive(client, seed, commands):
    """Reset to `seed`, apply `commands`; return the states (the reset's first)."""
    states = [client.reset(seed)]
    for command in commands:
        states.append(client.step(*command))
        if states[-1].done:
            break
    return states


# Test if a message goes through the pipe format and back: header, payload, end of stream.
def test_messages_round_trip():
    stream = io.BytesIO()
    worker.write_message(stream, {'cmd': 'step', 'steer': 0.5}, b'\x01\x02\x03')
    worker.write_message(stream, {'cmd': 'close'})
    stream.seek(0)
    assert worker.read_message(stream) == ({'cmd': 'step', 'steer': 0.5, 'nbytes': 3},
                                           b'\x01\x02\x03')
    assert worker.read_message(stream) == ({'cmd': 'close', 'nbytes': 0}, b'')
    assert worker.read_message(stream) is None


# Test if CARLA's command maps to MetaDrive's action: steer sign flipped, one pedal axis.
def test_carla_command_to_metadrive_action():
    assert worker.metadrive_action(0.25, 0.6, 0.0) == [-0.25, 0.6]
    assert worker.metadrive_action(-1.0, 0.6, 0.3) == [1.0, -0.3]
    assert command_problem(0.0, 1.0, 0.0) is None
    assert command_problem(math.nan, 1.0, 0.0) == 'steer is nan'
    assert command_problem(0.0, 0.0, math.inf) == 'brake is inf'
    assert clip_command(-3.0, 2.0, -1.0) == (-1.0, 1.0, 0.0)


@pytest.mark.metadrive
def test_first_state_route_and_frame(client):
    first = client.reset(SEED)
    assert first.image.shape == (32, 48, 3) and first.image.dtype == np.uint8
    assert first.image.std() > 0  # a rendered scene, not a blank buffer
    route = first.route
    assert route.shape[1] == 3 and len(route) > 50
    spacing = np.hypot(*np.diff(route[:, :2], axis=0).T)
    assert np.all(spacing > 0.5) and np.all(spacing < 1.5)  # about 1 m, like CARLA's planner
    assert math.hypot(route[0, 0] - first.x, route[0, 1] - first.y) < 6.0
    # the map frame is right-handed: a left turn (CARLA steer < 0) raises the yaw
    states = [client.step(0.0, 0.8, 0.0) for _ in range(15)]
    states += [client.step(-0.5, 0.5, 0.0) for _ in range(8)]
    assert states[-1].yaw > first.yaw + 0.1
    assert states[-1].yaw_rate > 0.0
    moved = math.hypot(states[14].x - first.x, states[14].y - first.y)
    assert moved > 1.0 and states[14].vx > 0.5
    assert states[-1].control == (-0.5, 0.5, 0.0)


# Test if one seed and one command sequence give the same poses and the same images again.
# In traffic a pixel or two of a distant car can differ between runs (seen: at most 2 of
# 1,536), and Bullet's velocities by ~1e-15: the ego car's states must match to 1e-6, the
# images nearly.
@pytest.mark.metadrive
def test_seeded_episode_is_deterministic(client):
    commands = [(0.0, 0.7, 0.0)] * 10 + [(0.2, 0.4, 0.0)] * 5 + [(0.0, 0.0, 0.5)] * 3
    first, second = drive(client, SEED, commands), drive(client, SEED, commands)
    assert len(first) == len(second) == len(commands) + 1
    assert np.array_equal(first[0].route, second[0].route)
    for a, b in zip(first, second, strict=True):
        assert (a.x, a.y, a.yaw, a.speed, a.vx, a.vy) == pytest.approx(
            (b.x, b.y, b.yaw, b.speed, b.vx, b.vy), abs=1e-6)
        assert (a.image != b.image).any(axis=2).mean() <= 0.01
    other = client.reset(SEED + 1)
    assert not np.array_equal(other.route, first[0].route)


# Test if a non-finite command ends the episode as bad_command, and out-of-range ones clip.
@pytest.mark.metadrive
def test_bad_command_ends_the_episode(client):
    client.reset(SEED)
    clipped = client.step(-7.0, 3.0, -2.0)
    assert clipped.control == (-1.0, 1.0, 0.0) and not clipped.done
    ended = client.step(0.0, math.nan, 0.0)
    assert ended.end == ('truncated', 'bad_command')
    assert 'throttle is nan' in ended.info['detail']
    with pytest.raises(RuntimeError, match='reset'):
        client.step(0.0, 0.5, 0.0)
    assert not client.reset(SEED).done  # the same worker goes on


# Test if driving off the road ends the episode as out_of_road after a line was crossed.
@pytest.mark.metadrive
def test_leaving_the_road_ends_with_out_of_road(client):
    states = drive(client, SEED, [(0.0, 0.7, 0.0)] * 15 + [(-0.6, 0.6, 0.0)] * 40)
    assert states[-1].end == ('terminated', 'out_of_road')
    invasions = {kind for state in states for kind in state.lane_invasion}
    assert invasions & {'solid', 'broken'}


# Test if a killed worker and a hung worker each end the episode as simulator_fault, and a
# reset starts a new worker that drives again.
@pytest.mark.metadrive
def test_simulator_fault_ends_the_episode_and_restarts(tmp_path):
    require_metadrive_venv()
    faulty = MetaDriveClient(MetaDriveConfig(run_dir=str(tmp_path), step_timeout=3.0, **SMALL))
    try:
        faulty.reset(SEED)
        assert not faulty.step(0.0, 0.5, 0.0).done
        first_pid = faulty.worker_pid
        faulty.kill()
        ended = faulty.step(0.0, 0.5, 0.0)
        assert ended.end == ('truncated', 'simulator_fault')
        assert faulty.worker_pid is None and faulty.faults == 1
        faulty.reset(SEED)
        assert faulty.worker_pid not in (None, first_pid)
        assert not faulty.step(0.0, 0.5, 0.0).done
        # a hung worker: stopped, it never answers within step_timeout
        os.kill(faulty.worker_pid, signal.SIGSTOP)
        hung = faulty.step(0.0, 0.5, 0.0)
        assert hung.end == ('truncated', 'simulator_fault')
        assert 'timeout' in hung.info['detail']
        assert faulty.faults == 2
        assert not faulty.reset(SEED + 1).done
    finally:
        faulty.close()


# Test if a block string picks the map, and close() removes the client's temporary run dir.
@pytest.mark.metadrive
def test_block_string_map_and_temporary_run_dir():
    require_metadrive_venv()
    blocks = MetaDriveClient(MetaDriveConfig(image_width=32, image_height=24, map='SCrX'))
    try:
        state = blocks.reset(0)
        assert len(state.route) > 100 and blocks.run_dir.is_dir()
        assert not blocks.step(0.0, 0.5, 0.0).done
    finally:
        run_dir = blocks.run_dir
        blocks.close()
    assert not run_dir.exists()
