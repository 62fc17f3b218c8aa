# Test driver + trainer over real DDS: transitions land in the buffer, updates run,
# checkpoints are written atomically and the driver hot-reloads them.
import json
import math
import re

import numpy as np
import pytest
from carla_msgs.msg import CarlaCollisionEvent
from helpers import REPO_LAUNCH, SMALL_TRAINER, bgra_frame, launch_nodes, trainer_params
from nav_msgs.msg import Odometry
from ros_helpers import FakeBridge, path_msg
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from av_td3_ros.learning.replay_buffer import ReplayBuffer
from av_td3_ros.policy.checkpoint import PolicySpec, latest_policy, load_policy, save_policy
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

CAPACITY = SMALL_TRAINER['buffer_capacity']  # what trainer_params() gives
# The trainer saves its policy, training state and buffer on SIGINT: on a busy machine that
# can take longer than the default 10 s before the SIGKILL that would fail the test.
TRAINER_STOP_S = 60.0


def wait_until_matched(bridge, expected, timeout=60.0):
    """Spin until every publisher has matched at least its expected number of subscribers."""
    return bridge.spin_until(lambda: all(pub.get_subscription_count() >= count
                                         for pub, count in expected.items()), timeout)


def trainer_steps(trainer):
    """Return the newest env step count of the trainer's progress lines (0 before any)."""
    counts = re.findall(r'steps (\d+) \|', trainer.output())
    return int(counts[-1]) if counts else 0


# Episode stamps (s) far above the warm-up's, so warm-up frames are stale once they start.
FIRST_EPISODE, SECOND_EPISODE = 5000, 7000  # bgra_frame(k) needs k < 9000


# One rerun: on loaded fresh-clone runs this test has stalled (1 of 2 on 2026-12-01): the
# trainer stopped counting camera frames mid-episode while the driver went on answering
# them. Not yet understood; a failure prints the trainer's thread stacks to find it.
@pytest.mark.slow
@pytest.mark.flaky(reruns=1)
def test_driver_and_trainer_learn_from_the_graph(start_node, tmp_path, rclpy_context):
    run_dir = tmp_path / 'run'
    # Frames here are stamped 1 s apart; a 3 s event window lets the collision below be
    # served up to three frames after its own, whatever order the trainer's executor picks.
    _, (driver, trainer) = launch_nodes(
        start_node, tmp_path, REPO_LAUNCH / 'train.launch.xml', run_dir=str(run_dir),
        learning_starts='12', device='cpu', use_sim_time='false',
        # No policy broadcast here (7.6 MB per checkpoint every 4 updates on a loaded CI
        # machine): this test covers the file-based hot reload; test_policy_topic the rest.
        trainer_params_file=str(trainer_params(tmp_path, event_window=3.0, policy_topic='')))
    bridge = FakeBridge(rclpy_context)
    collision_pub = bridge.node.create_publisher(
        CarlaCollisionEvent, '/carla/ego_vehicle/collision', 10)
    resets = []

    def on_reset(request, response):
        resets.append(request)
        response.success = True
        return response

    bridge.node.create_service(Trigger, '/av_td3/ego_vehicle/reset_episode', on_reset)
    try:
        assert trainer.wait_for_output('training from ego_vehicle', timeout=60), \
            trainer.output()
        # Both nodes' subscriptions, not only the driver's: camera, odometry, route and
        # episode_start go to the driver and the trainer, collisions to the trainer.
        assert wait_until_matched(bridge, {
            bridge.image_pub: 2, bridge.odom_pub: 2, bridge.route_pub: 2,
            bridge.episode_pub: 2, collision_pub: 1}), (driver.output(), trainer.output())
        bridge.publish_route()
        assert bridge.warm_up(), driver.output()
        # The trainer pairs frames with the driver's commands once the driver's publisher
        # has matched it too: feed frames until it has stored a transition.
        # (Watchdog brakes carry the wall-clock time; frame answers carry the frame's stamp.)
        after_warm_up = max(c.header.stamp.sec for c in bridge.commands
                            if c.header.stamp.sec < FIRST_EPISODE) + 1
        for sec in range(after_warm_up, after_warm_up + 800):
            bridge.send_frame_and_wait(sec)
            if bridge.spin_until(lambda: trainer_steps(trainer) > 0, timeout=0.05):
                break
        assert trainer_steps(trainer) > 0, trainer.output()
        # Lock-step frames; the trainer pairs each with the driver's command. Frames older
        # than this episode_start (the warm-up) are stale for the trainer from here on.
        bridge.episode_pub.publish(Header(frame_id='1', stamp=_stamp(FIRST_EPISODE)))
        assert driver.wait_for_output('episode 1 starts')
        for sec in range(FIRST_EPISODE, FIRST_EPISODE + 25):
            assert bridge.send_frame_and_wait(sec), (sec, driver.output())
        # A collision ends the episode: terminated, then the trainer asks for a reset. The
        # event travels on its own topic; no sleep orders it before its frame.
        event = CarlaCollisionEvent()
        event.header.stamp = _stamp(FIRST_EPISODE + 25)
        collision_pub.publish(event)
        for sec in range(FIRST_EPISODE + 25, FIRST_EPISODE + 60):
            assert bridge.send_frame_and_wait(sec), (sec, driver.output())
            if bridge.spin_until(lambda: resets, timeout=0.05):
                break
        assert bridge.spin_until(lambda: resets, timeout=30.0), trainer.stacks()
        bridge.episode_pub.publish(Header(frame_id='2', stamp=_stamp(SECOND_EPISODE)))
        for sec in range(SECOND_EPISODE, SECOND_EPISODE + 12):
            assert bridge.send_frame_and_wait(sec), (sec, driver.output())
        assert trainer.wait_for_output('checkpoint: policy after', timeout=60), \
            trainer.output()
        # The driver swaps in a trained policy (step > 0; the trainer also writes its initial
        # actor as step 0 at start) between frames; keep feeding frames until it does.
        def trained_policy_loaded():
            steps = re.findall(r'loaded policy_(\d+)\.safetensors', driver.output())
            return any(int(step) > 0 for step in steps)

        for sec in range(SECOND_EPISODE + 12, SECOND_EPISODE + 300):
            bridge.send_frame_and_wait(sec)
            if trained_policy_loaded():
                break
        assert trained_policy_loaded(), driver.output()
        assert 'ended (collision)' in trainer.output()
        assert 'activation health' in trainer.output()
    finally:
        bridge.close()
    assert trainer.stop(TRAINER_STOP_S) == 0, trainer.output()

    # The buffer holds what the trainer committed, with the done flags where they belong.
    buffer = ReplayBuffer.open(run_dir, CAPACITY, check_ram=False)
    try:
        lo, end = buffer.window
        batch = buffer.get(np.array([i for i in range(lo, end)
                                     if buffer.sampleable(np.array([i]))[0]]))
    finally:
        buffer.close()
    assert len(batch.rewards) >= 25
    assert batch.terminated.sum() == 1 and batch.truncated.sum() == 0
    terminal = int(np.argmax(batch.terminated))
    assert batch.rewards[terminal] < -90.0  # collision at 5 m/s: safety -100
    others = np.delete(batch.rewards, terminal)
    assert np.all(np.abs(others) < 50.0)
    assert np.all(np.abs(batch.actions) <= 1.0)
    # Checkpoints are complete, loadable files; only the newest keep_checkpoints remain.
    policies = sorted((run_dir / 'checkpoints').glob('policy_*.safetensors'))
    assert 1 <= len(policies) <= 2
    load_policy(latest_policy(run_dir / 'checkpoints'))
    assert not list((run_dir / 'checkpoints').glob('.*.tmp'))
    assert (run_dir / 'training_state.safetensors').exists()
    episodes = [json.loads(line) for line in (run_dir / 'episodes.jsonl').open()]
    assert [record['reason'] for record in episodes].count('collision') == 1
    assert list((run_dir / 'tb').glob('events.out.tfevents.*'))


def _stamp(sec):
    header = Header()
    header.stamp.sec = sec
    return header.stamp


@pytest.mark.slow
def test_one_trainer_pairs_several_vehicles_separately_and_resumes(start_node, tmp_path,
                                                                    rclpy_context):
    # Two vehicles feed one trainer; this test plays both the bridge and the drivers, with
    # different actions per vehicle, so a cross-vehicle pairing would show in the buffer.
    from carla_msgs.msg import CarlaEgoVehicleControl
    from rclpy.duration import Duration
    run_dir = tmp_path / 'run'
    params = trainer_params(tmp_path)
    args = ('--params-file', str(params), '-p', f'run_dir:={run_dir}',
            '-p', 'vehicles:=[alpha, beta]', '-p', 'learning_starts:=6', '-p', 'device:=cpu')
    trainer = start_node('av_td3_ros.nodes.trainer', *args, name='trainer')
    bridges = {role: FakeBridge(rclpy_context, role=role, name=f'fake_{role}')
               for role in ('alpha', 'beta')}
    steer = {'alpha': 0.5, 'beta': -0.5}
    brightness = {'alpha': 200, 'beta': 50}  # each vehicle's camera sees its own grey
    commands = {role: bridge.node.create_publisher(
        CarlaEgoVehicleControl, f'/carla/{role}/vehicle_control_cmd', 10)
        for role, bridge in bridges.items()}
    try:
        assert trainer.wait_for_output('training from alpha, beta', timeout=60), \
            trainer.output()
        for role, bridge in bridges.items():
            for publisher in (bridge.image_pub, bridge.odom_pub, bridge.route_pub,
                              commands[role]):
                assert bridge.wait_for_subscriber(publisher)
            bridge.publish_route()
            bridge.publish_odometry()
        # A frame is dropped unless a route and an odometry sample are there before it. Both
        # are unstamped, so once acknowledged they serve every frame, whatever the order of
        # each frame and its own odometry below (two topics are not ordered).
        for bridge in bridges.values():
            for publisher in (bridge.route_pub, bridge.odom_pub):
                assert publisher.wait_for_all_acked(Duration(seconds=30.0))

        def frames_taken():  # by the trainer, from its progress lines (every log_period)
            counts = re.findall(r'\| frames (\d+) \(', trainer.output())
            return int(counts[-1]) if counts else 0

        ahead = 6  # frames per vehicle in flight: below every queue's depth (10) on the way
        for sec in range(1, 13):
            assert bridges['alpha'].spin_until(
                lambda s=sec: frames_taken() >= 2 * (s - 1 - ahead), timeout=60.0), \
                trainer.output()
            for role, bridge in bridges.items():
                bridge.publish_odometry()
                pixels = np.full((600, 800, 4), brightness[role], np.uint8)
                bridge.image_pub.publish(bridge.image_msg(sec, pixels))
                command = CarlaEgoVehicleControl(steer=steer[role], throttle=0.3)
                command.header.stamp.sec = sec
                commands[role].publish(command)
        assert trainer.wait_for_output('checkpoint: policy after', timeout=60), \
            trainer.output()
    finally:
        for bridge in bridges.values():
            bridge.close()
    assert trainer.stop(TRAINER_STOP_S) == 0, trainer.output()
    buffer = ReplayBuffer.open(run_dir, CAPACITY, check_ram=False)
    try:
        lo, end = buffer.window
        usable = [i for i in range(lo, end) if buffer.sampleable(np.array([i]))[0]]
        batch = buffer.get(np.array(usable))
    finally:
        buffer.close()
    # Both vehicles contributed, and every transition pairs one vehicle's frames with that
    # same vehicle's action.
    # Frames are paced by the trainer's periodic frame count, not one by one, so a loaded
    # machine may still drop a few; what matters is that both vehicles contributed and
    # nothing was paired across them.
    assert len(batch.rewards) >= 10
    for role in ('alpha', 'beta'):
        mine = np.isclose(batch.actions[:, 0], steer[role])
        assert mine.sum() >= 4
        assert np.all(batch.next_frames[mine, -1] == brightness[role])
        assert np.all(batch.obs_frames[mine][~batch.obs_missing[mine]] == brightness[role])

    # Writers killed mid-write leave temp files; a file of the same step from a lost run
    # holds other weights than this run's state. Restart: the temps go, nothing else does,
    # and the resumed trainer never rewrites an existing policy name with its own weights.
    checkpoints = run_dir / 'checkpoints'
    newest = latest_policy(checkpoints)
    step = int(re.search(r'policy_(\d+)', newest.name).group(1))
    save_policy(newest, ActorPolicy(NetworkConfig()), PolicySpec())  # another run's weights
    policies_before = {p.name: p.read_bytes() for p in checkpoints.glob('policy_*')}
    stale = [run_dir / '.training_state.safetensors.k2j4h6g8.tmp',
             checkpoints / f'.policy_{step + 4:09d}.safetensors.a1b2c3d4.tmp',
             run_dir / 'replay_buffer' / 'meta.json.tmp']
    foreign = [checkpoints / 'notes.tmp', run_dir / '.other.safetensors.a1b2c3d4.tmp']
    for path in stale + foreign:
        path.write_bytes(b'\x00' * 64)
    # Restarting with the same run_dir resumes networks, optimisers and counters.
    # (No updates in the resumed run: its shutdown save is at the resumed step.)
    again = start_node('av_td3_ros.nodes.trainer', *args, '-p', 'updates_per_step:=0.0',
                       name='trainer_again')
    assert again.wait_for_output('resumed', timeout=60), again.output()
    line = next(line for line in again.output().splitlines() if 'resumed' in line)
    assert ' 0 updates' not in line and 'env steps' in line
    assert again.wait_for_output('training from', timeout=60), again.output()
    assert [path for path in stale if path.exists()] == []
    assert all(path.exists() for path in foreign)
    assert again.stop(TRAINER_STOP_S) == 0
    # Its shutdown save reached the same step: the file there keeps the other run's bytes.
    assert {p.name: p.read_bytes() for p in checkpoints.glob('policy_*')} == policies_before
    # A resume under another policy spec is refused, naming the difference.
    other = start_node('av_td3_ros.nodes.trainer', *args, '-p', 'frame_scale:=unit',
                       name='trainer_other_spec')
    assert other.wait(timeout=60) != 0, other.output()
    assert ("preprocessing.scale: trainer 'unit' != training state 'zero_centered'"
            in other.output()), other.output()


def refused_count(trainer):
    """Return the trainer's newest count of refused routes/odometry/commands (0 before any)."""
    counts = re.findall(r'refused routes/odometry/commands (\d+)', trainer.output())
    return int(counts[-1]) if counts else 0


@pytest.mark.slow
def test_bad_routes_odometry_and_commands_never_end_the_trainer(start_node, tmp_path,
                                                                 rclpy_context):
    # Degenerate routes (two identical poses, a NaN in the middle, inf, none), unusable
    # odometry and a NaN command: each is refused and logged, frames wait for a good route,
    # and the trainer goes on to store transitions once one comes.
    from carla_msgs.msg import CarlaEgoVehicleControl
    run_dir = tmp_path / 'run'
    trainer = start_node('av_td3_ros.nodes.trainer', '--params-file',
                         str(trainer_params(tmp_path)), '-p', f'run_dir:={run_dir}',
                         '-p', 'learning_starts:=100000', '-p', 'device:=cpu', name='trainer')
    bridge = FakeBridge(rclpy_context)
    command_pub = bridge.node.create_publisher(
        CarlaEgoVehicleControl, '/carla/ego_vehicle/vehicle_control_cmd', 10)

    def send_frame(sec, steer=0.1):
        bridge.publish_odometry()
        bridge.image_pub.publish(bridge.image_msg(sec, bgra_frame(sec)))
        command = CarlaEgoVehicleControl(steer=steer, throttle=0.3)
        command.header.stamp.sec = sec
        command_pub.publish(command)

    def refused_reaches(count):
        return bridge.spin_until(lambda: refused_count(trainer) >= count, timeout=30.0)

    try:
        assert trainer.wait_for_output('training from ego_vehicle', timeout=60), \
            trainer.output()
        assert wait_until_matched(bridge, {bridge.image_pub: 1, bridge.odom_pub: 1,
                                           bridge.route_pub: 1, command_pub: 1})
        sec = 1
        bad_routes = [[(5.0, 5.0), (5.0, 5.0)], [(0.0, 0.0), (math.nan, 1.0), (4.0, 0.0)],
                      [(0.0, 0.0), (math.inf, 0.0)], []]
        for refused, points in enumerate(bad_routes, start=1):
            bridge.route_pub.publish(path_msg(points))  # latched, depth 1: one at a time
            assert refused_reaches(refused), trainer.output()
            for _ in range(3):  # frames on a refused route: dropped, never a crash
                send_frame(sec)
                sec += 1
        for field, value in (('x', math.nan), ('speed', math.inf), ('yaw', math.nan)):
            odometry = Odometry()
            odometry.pose.pose.orientation.w = 1.0
            if field == 'x':
                odometry.pose.pose.position.x = value
            elif field == 'speed':
                odometry.twist.twist.linear.x = value
            else:
                odometry.pose.pose.orientation.z = value
            bridge.odom_pub.publish(odometry)
        assert refused_reaches(len(bad_routes) + 3), trainer.output()
        bridge.publish_route()
        send_frame(sec, steer=math.nan)
        assert refused_reaches(len(bad_routes) + 4), trainer.output()
        for good in range(sec + 1, sec + 40):
            send_frame(good)
            if bridge.spin_until(lambda: trainer_steps(trainer) >= 5, timeout=0.1):
                break
        assert trainer_steps(trainer) >= 5, trainer.output()
        output = trainer.output()
        assert 'route of 2 poses refused (route has fewer than two distinct points)' in output
        assert 'odometry ignored: odometry has non-finite' in output
        assert 'command ignored: non-finite action' in output
        assert 'Traceback' not in output
    finally:
        bridge.close()
    assert trainer.stop(TRAINER_STOP_S) == 0, trainer.output()



def feed_until_checkpoints(bridge, command_pub, trainer, first_sec, checkpoints):
    """Send frames and commands until the trainer logged `checkpoints` policy saves."""
    from carla_msgs.msg import CarlaEgoVehicleControl

    def saved():
        return trainer.output().count('checkpoint: policy after') >= checkpoints

    for sec in range(first_sec, first_sec + 400):
        bridge.publish_odometry()
        bridge.image_pub.publish(bridge.image_msg(sec, bgra_frame(sec)))
        command = CarlaEgoVehicleControl(steer=0.1, throttle=0.3)
        command.header.stamp.sec = sec
        command_pub.publish(command)
        if bridge.spin_until(saved, timeout=0.1):
            return sec + 1
    raise AssertionError(trainer.output())


KILLS = 2


@pytest.mark.slow
def test_a_trainer_killed_while_saving_restarts_clean_and_never_rewrites_a_policy(
        start_node, tmp_path, rclpy_context):
    # The full training state (~64 MB) is saved after every update here; each trainer is
    # SIGKILLed as soon as a save's temp file shows up. After each restart no temp file may be
    # left, and no policy name may ever have held two different contents.
    from carla_msgs.msg import CarlaEgoVehicleControl
    from storage_torture import temp_files
    run_dir = tmp_path / 'run'

    def stray_files():
        """Return files a writer did not mean to leave (logs and TensorBoard are meant)."""
        return [path for path in temp_files(run_dir) if path.name != 'episodes.jsonl'
                and path.relative_to(run_dir).parts[0] != 'tb']

    args = ('--params-file', str(trainer_params(tmp_path, state_every=1, checkpoint_every=1,
                                                keep_checkpoints=100)),
            '-p', f'run_dir:={run_dir}', '-p', 'learning_starts:=6', '-p', 'device:=cpu')
    bridge = FakeBridge(rclpy_context)
    command_pub = bridge.node.create_publisher(
        CarlaEgoVehicleControl, '/carla/ego_vehicle/vehicle_control_cmd', 10)
    contents, leftovers, left_by_kills, sec = {}, [], 0, 1

    def same_names_same_bytes():
        for path in (run_dir / 'checkpoints').glob('policy_*'):
            assert contents.setdefault(path.name, path.read_bytes()) == path.read_bytes(), \
                path.name

    try:
        for run in range(KILLS + 1):
            trainer = start_node('av_td3_ros.nodes.trainer', *args, name=f'trainer_{run}')
            assert trainer.wait_for_output('training from', timeout=60), trainer.output()
            # (It may already be writing again: only the killed writer's files must be gone.)
            assert [path for path in leftovers if path.exists()] == [], trainer.output()
            same_names_same_bytes()
            if run == KILLS:
                break
            assert wait_until_matched(bridge, {bridge.image_pub: 1, bridge.odom_pub: 1,
                                               bridge.route_pub: 1, command_pub: 1})
            bridge.publish_route()
            sec = feed_until_checkpoints(bridge, command_pub, trainer, sec, 2)
            bridge.spin_until(lambda: any(run_dir.glob('.training_state.*.tmp')), timeout=10)
            trainer.kill()
            leftovers = stray_files()
            left_by_kills += len(leftovers)
        assert 'resumed' in trainer.output()
        assert trainer.stop(TRAINER_STOP_S) == 0, trainer.output()
    finally:
        bridge.close()
    assert stray_files() == []
    same_names_same_bytes()
    assert left_by_kills >= 1  # the kills did land inside writes


def test_a_camera_profile_start_keeps_the_trainer_on_the_camera_profile(tmp_path):
    # What the actor sees of the kinematic vector belongs to the starting policy.
    from dataclasses import MISSING
    from dataclasses import replace as dc_replace

    from av_td3_ros.nodes.trainer import TrainerConfig, with_initial_policy_decisions
    camera = PolicySpec(network=NetworkConfig(kinematic_inputs='speed'))
    start = tmp_path / 'camera.safetensors'
    save_policy(start, ActorPolicy(camera.network), camera)
    # A skeleton config: None where a field has no default (this check reads none of them).
    fields = {name: None for name, field in TrainerConfig.__dataclass_fields__.items()
              if field.default is MISSING and field.default_factory is MISSING}
    config = TrainerConfig(**{**fields, 'spec': PolicySpec(), 'initial_policy': ''})
    assert with_initial_policy_decisions(config) is config
    decided = with_initial_policy_decisions(dc_replace(config, initial_policy=str(start)))
    assert decided.spec.network.kinematic_inputs == 'speed'
    assert decided.spec.preprocessing == config.spec.preprocessing
