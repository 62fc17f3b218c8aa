# Test carla_episode_manager against a fake CARLA world on the bridge's topics (the node runs
# in its own process; CARLA cannot run here).
import math
import time

import pytest
import yaml
from carla_fake_bridge import FakeCarlaWorld
from carla_msgs.msg import CarlaEgoVehicleControl
from helpers import REPO_LAUNCH, launch_nodes, trainer_params
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

A = (0.0, 0.0)
B = (30.0, 0.0)


def stamp_ns(header):
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def near(position, point, tolerance=1.0):
    return math.hypot(position[0] - point[0], position[1] - point[1]) <= tolerance


class Episodes:
    """Collect episode_start / episode_end in the world's node."""

    def __init__(self, world):
        self.starts, self.ends = [], []
        world.node.create_subscription(Header, '/av_td3/ego_vehicle/episode_start',
                                       self.starts.append, 10)
        world.node.create_subscription(String, '/av_td3/ego_vehicle/episode_end',
                                       lambda msg: self.ends.append(msg.data), 10)


def drive(world, until, throttle=0.0, brake=0.0, timeout=60.0):
    """Tick the world with a fixed command (the test plays the driver) until `until()`.

    Bounded by wall time, not by ticks: a tick lasts as long as the manager takes to receive
    its frame, while discovery and a reset's steps take wall time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        world.control = CarlaEgoVehicleControl(throttle=throttle, brake=brake)
        world.tick(wait_for_command=False)
        if until():
            return True
    return until()


@pytest.mark.slow
def test_manager_runs_episodes_through_the_bridge_topics(start_node, rclpy_context, tmp_path):
    spawns = tmp_path / 'spawns.yaml'
    spawns.write_text(yaml.safe_dump({'spawn_points': [[*A, 0.5, 0.0], [*B, 0.5, 180.0]]}))
    manager = start_node('av_td3_ros.nodes.carla_episode_manager',
                         '-p', f'spawn_points_file:={spawns}', '-p', 'goal_tolerance:=3.0',
                         '-p', 'stuck_time:=1.0', '-p', 'episode_timeout:=6.0',
                         '-p', 'reset_timeout:=5.0')
    world = FakeCarlaWorld(rclpy_context, start=(50.0, 20.0, 0.0))
    episodes = Episodes(world)
    try:
        # 1. Auto start: teleport to A at standstill, goal B, route, then the first frame.
        assert drive(world, lambda: episodes.starts, brake=1.0), manager.output()
        first = world.teleports[0]
        assert (first.position.x, first.position.y, first.position.z) == (*A, 0.5)
        assert world.velocities and all(v.linear.x == 0.0 for v in world.velocities)
        assert (world.goals[-1].pose.position.x, world.goals[-1].pose.position.y) == B
        assert world.goals[-1].header.frame_id == 'map'
        start = episodes.starts[0]
        assert start.frame_id == '1'
        # The episode starts at a frame the camera took at the spawn point.
        assert near(world.frames[stamp_ns(start)], A), world.frames[stamp_ns(start)]

        # 2. Full throttle to the route's end: terminated, then the next spawn point, B.
        assert drive(world, lambda: episodes.ends, throttle=1.0), manager.output()
        assert episodes.ends[0].startswith('terminated:route_completed;steps=')
        assert drive(world, lambda: len(episodes.starts) == 2, brake=1.0)
        assert near(world.frames[stamp_ns(episodes.starts[1])], B)
        rotation = world.teleports[-1].orientation
        assert math.isclose(2 * math.degrees(math.atan2(rotation.z, rotation.w)), 180.0)

        # 3. Standing still: truncated as stuck; episode 3 starts back at A.
        assert drive(world, lambda: len(episodes.ends) == 2, brake=1.0)
        assert episodes.ends[1].startswith('truncated:stuck;')
        assert drive(world, lambda: len(episodes.starts) == 3, brake=1.0)
        assert episodes.starts[2].frame_id == '3'

        # 4. The trainer's reset (e.g. after a collision): no episode_end from the manager.
        client = world.node.create_client(Trigger, '/av_td3/ego_vehicle/reset_episode')
        assert client.wait_for_service(timeout_sec=30.0)
        future = client.call_async(Trigger.Request())
        assert world.spin_until(future.done, timeout=30.0)
        assert future.result().success, future.result().message
        assert drive(world, lambda: len(episodes.starts) == 4, brake=1.0)
        assert len(episodes.ends) == 2
        assert near(world.frames[stamp_ns(episodes.starts[3])], B)

        # 5. Moving, but not reaching the goal in time: truncated by the time limit.
        assert drive(world, lambda: len(episodes.ends) == 3, throttle=0.3)
        assert episodes.ends[2].startswith('truncated:time_limit;')
        assert manager.proc.poll() is None, manager.output()
    finally:
        world.close()


@pytest.mark.slow
def test_training_runs_episodes_end_to_end_through_the_manager(start_node, rclpy_context,
                                                                tmp_path):
    # carla_train.launch.xml without the bridge (the fake world plays it and the waypoint
    # publisher): manager + explore driver + trainer, lock-step like the synchronous bridge.
    run_dir = tmp_path / 'run'
    description, nodes = launch_nodes(
        start_node, tmp_path, REPO_LAUNCH / 'carla_train.launch.xml', with_bridge='false',
        use_sim_time='false', run_dir=str(run_dir), learning_starts='12', device='cpu',
        episode_timeout='600.0', trainer_params_file=str(
            trainer_params(tmp_path, tensorboard=False, max_episode_steps=8)))
    manager, driver, trainer = nodes
    world = FakeCarlaWorld(rclpy_context, start=(0.0, 0.0, 0.0))
    episodes = Episodes(world)
    try:
        assert trainer.wait_for_output('training from ego_vehicle', timeout=90), \
            trainer.output()
        # DDS matches endpoints in the background: tick only once the camera reaches both
        # readers, odometry all three nodes, and the manager's episode_start both the driver
        # and the trainer (a volatile topic: a start sent before the match is lost for good).
        start_topic = '/av_td3/ego_vehicle/episode_start'
        assert world.spin_until(
            lambda: world.image_pub.get_subscription_count() >= 2
            and world.odom_pub.get_subscription_count() >= 3
            and world.node.count_subscribers(start_topic) >= 3
            and world.node.count_publishers(start_topic) >= 1, timeout=60.0), \
            (manager.output(), trainer.output(), driver.output())

        def recorded_episodes():
            path = run_dir / 'episodes.jsonl'
            return path.read_text().count('\n') if path.exists() else 0

        # Bounded by wall time, not by ticks: a tick takes milliseconds while a reset (the
        # trainer's service call, the manager's teleport on its steady-clock timer) takes
        # wall time, so on a loaded machine a fixed tick budget ran out after 3 episodes.
        deadline = time.monotonic() + 180.0
        while time.monotonic() < deadline:
            world.tick(timeout=1.0)
            if len(episodes.starts) >= 4 and recorded_episodes() >= 3:
                break
        logs = (manager.output(), trainer.output()[-3000:], driver.output()[-3000:])
        assert len(episodes.starts) >= 4, logs
        assert [int(h.frame_id) for h in episodes.starts] == list(
            range(1, len(episodes.starts) + 1))
        # Every episode began at the spawn point (the car's pose at start), after a teleport.
        for start in episodes.starts:
            assert near(world.frames[stamp_ns(start)], (0.0, 0.0)), logs
        assert len(world.teleports) >= len(episodes.starts)
        # The trainer ended each episode (its step limit), recorded it and called
        # reset_episode; the manager's teleport and first frame started the next one.
        assert recorded_episodes() >= 3, logs
        assert manager.output().count('reset_episode called: resetting') >= 3, logs
        assert 'ended:' not in manager.output()  # the manager ended none itself
        assert all(node.proc.poll() is None for node in nodes), logs
    finally:
        world.close()


@pytest.mark.parametrize('content, message', [
    (None, 'No such file'),
    ('spawn_points: [[1, 2, 3]]', 'must be [x, y, z, yaw]'),
    ('spawn_points: [[1, 2, 3, 0]]\ngoals: [[1, 2, 3, 0], [4, 5, 6, 0]]', '2 goals for 1'),
])
def test_bad_spawn_files_stop_the_manager_with_a_reason(start_node, tmp_path, content,
                                                        message):
    path = tmp_path / 'spawns.yaml'
    if content is not None:
        path.write_text(content)
    manager = start_node('av_td3_ros.nodes.carla_episode_manager',
                         '-p', f'spawn_points_file:={path}')
    assert manager.wait(timeout=60) == 2, manager.output()
    assert 'cannot run episodes' in manager.output() and message in manager.output()
