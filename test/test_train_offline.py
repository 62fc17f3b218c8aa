# Test if train_offline turns a small recorded drive (mcap or sqlite3) into a policy that clones
# the route expert better than it started, through the trainer's own pairing and Learner.
import json

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from av_td3_ros.policy.checkpoint import PolicySpec, load_policy, read_metadata
from av_td3_ros.tools.bags import STORAGES
from av_td3_ros.tools.bags.types import typestore
from av_td3_ros.tools.train_offline import main

BASE = '/carla/ego_vehicle'
TOPICS = {'route': (f'{BASE}/waypoints', 'nav_msgs/msg/Path'),
          'start': ('/av_td3/ego_vehicle/episode_start', 'std_msgs/msg/Header'),
          'odometry': (f'{BASE}/odometry', 'nav_msgs/msg/Odometry'),
          'camera': (f'{BASE}/rgb_front/image', 'sensor_msgs/msg/Image'),
          'command': (f'{BASE}/vehicle_control_cmd', 'carla_msgs/msg/CarlaEgoVehicleControl')}


def write_drive(path, storage, episodes=2, steps=24):
    """Write drives along a curved route: weaving within 1.5 m of it, random commands."""
    store = typestore()
    T = store.types
    Time, Header = T['builtin_interfaces/msg/Time'], T['std_msgs/msg/Header']
    Point, Quaternion = T['geometry_msgs/msg/Point'], T['geometry_msgs/msg/Quaternion']
    Vector3 = T['geometry_msgs/msg/Vector3']
    rng = np.random.default_rng(0)

    def header(ns, frame_id='map'):
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame_id)

    def pose(x, y, yaw):
        return T['geometry_msgs/msg/Pose'](
            position=Point(x=x, y=y, z=0.0),
            orientation=Quaternion(x=0.0, y=0.0, z=np.sin(yaw / 2), w=np.cos(yaw / 2)))

    def centre(x):
        return 6.0 * np.sin(x / 25.0)

    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        conns = {key: writer.add_connection(topic, msgtype, typestore=store)
                 for key, (topic, msgtype) in TOPICS.items()}

        def write(key, t, msg):
            writer.write(conns[key], t, store.serialize_cdr(msg, conns[key].msgtype))

        t = 1_700_000_000 * 10**9
        xs = np.arange(0.0, 200.0, 2.0)
        write('route', t, T['nav_msgs/msg/Path'](header=header(t), poses=[
            T['geometry_msgs/msg/PoseStamped'](header=header(t), pose=pose(x, centre(x), 0.0))
            for x in xs]))
        for episode in range(episodes):
            t += 10**9
            write('start', t, header(t, str(episode)))
            for k in range(steps):
                t += 50 * 10**6
                x = 3.0 * k + 10.0 * episode
                offset = 1.5 * np.sin(0.7 * k + episode)
                yaw = np.arctan(np.cos(x / 25.0) * 6.0 / 25.0) + 0.3 * np.cos(0.7 * k)
                odom = T['nav_msgs/msg/Odometry'](
                    header=header(t), child_frame_id='ego_vehicle',
                    pose=T['geometry_msgs/msg/PoseWithCovariance'](
                        pose=pose(x, centre(x) + offset, yaw), covariance=np.zeros(36)),
                    twist=T['geometry_msgs/msg/TwistWithCovariance'](
                        twist=T['geometry_msgs/msg/Twist'](
                            linear=Vector3(x=4.0 + k % 5, y=0.0, z=0.0),
                            angular=Vector3(x=0.0, y=0.0, z=0.0)),
                        covariance=np.zeros(36)))
                write('odometry', t - 1, odom)
                pixels = rng.integers(0, 256, (96, 96, 4), np.uint8)
                write('camera', t, T['sensor_msgs/msg/Image'](
                    header=header(t, 'ego_vehicle/rgb_front'), height=96, width=96,
                    encoding='bgra8', is_bigendian=0, step=96 * 4, data=pixels.reshape(-1)))
                steer, throttle = rng.uniform(-1.0, 1.0), rng.uniform(0.0, 1.0)
                write('command', t + 1, T['carla_msgs/msg/CarlaEgoVehicleControl'](
                    header=header(t, ''), throttle=throttle, steer=steer, brake=0.0,
                    hand_brake=False, reverse=False, gear=1, manual_gear_shift=False))


@pytest.mark.parametrize('storage', sorted(STORAGES))
def test_offline_training_on_a_recorded_bag_lowers_the_bc_loss(tmp_path, storage, capsys):
    bag, out, tb = tmp_path / 'drive', tmp_path / 'policy.safetensors', tmp_path / 'tb'
    write_drive(bag, storage)
    report = main(['train_offline', '--bag', str(bag), '--out', str(out), '--bc-updates', '40',
                   '--td3-updates', '2', '--batch-size', '8', '--seed', '1',
                   '--tensorboard', str(tb), '-p', 'torch_threads:=1', '-p', 'device:=cpu',
                   '-p', 'precision:=fp32', '-p', 'actor_lr:=0.001'])
    printed = capsys.readouterr().out
    assert report['transitions'] >= 40, printed
    assert report['bc_loss_after'] < 0.7 * report['bc_loss_before'], printed
    assert report['updates'] == 42
    policy, metadata = load_policy(out, PolicySpec())
    assert json.loads(read_metadata(out)['train_offline'])['bc_loss_after'] == \
        report['bc_loss_after']
    assert 'BC 40/40' in printed and 'TD3 2/2' in printed
    assert list(tb.glob('events.out.tfevents.*'))


def test_a_bag_without_the_drive_topics_is_refused_naming_them(tmp_path):
    bag = tmp_path / 'empty'
    with Writer(bag, version=9, storage_plugin=STORAGES['mcap']) as writer:
        writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=typestore())
    with pytest.raises(SystemExit, match='no /carla/ego_vehicle/rgb_front/image messages'):
        main(['train_offline', '--bag', str(bag), '--out', str(tmp_path / 'p.safetensors')])
