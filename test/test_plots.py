# Test plot_run on a small synthetic bag and episodes.jsonl: valid PNGs, right data counts.
import json
import struct

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from av_td3_ros.tools.bags.types import typestore
from av_td3_ros.tools.plots import (
    episodes_from_bag,
    main,
    plot_all,
    read_episodes,
    read_run,
)

BASE = '/carla/ego_vehicle'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def png_size(path):
    """Return (width, height) of a PNG after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b'IHDR'
    assert data[-8:-4] == b'IEND'
    return struct.unpack('>II', data[16:24])


def write_run_bag(path, frames=10, unanswered=(3, 7)):
    """Write camera frames, commands for all but `unanswered`, debug stacks and episode ends."""
    store = typestore()
    T = store.types
    Header, Time = T['std_msgs/msg/Header'], T['builtin_interfaces/msg/Time']
    with Writer(path, version=9) as writer:
        cam = writer.add_connection(f'{BASE}/rgb_front/image', 'sensor_msgs/msg/Image',
                                    typestore=store)
        ctl = writer.add_connection(f'{BASE}/vehicle_control_cmd',
                                    'carla_msgs/msg/CarlaEgoVehicleControl', typestore=store)
        dbg = writer.add_connection('/ego_vehicle/driver/debug/frame_stack',
                                    'sensor_msgs/msg/Image', typestore=store)
        end = writer.add_connection('/av_td3/ego_vehicle/episode_end', 'std_msgs/msg/String',
                                    typestore=store)
        for k in range(frames):
            t = 10**9 + k * 5 * 10**7
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id='cam')
            pixels = np.full((48, 64, 4), 20 * k, np.uint8)
            writer.write(cam, t, store.serialize_cdr(T['sensor_msgs/msg/Image'](
                header=header, height=48, width=64, encoding='bgra8', is_bigendian=0,
                step=256, data=pixels.reshape(-1)), 'sensor_msgs/msg/Image'))
            if k in unanswered:
                continue
            writer.write(ctl, t + 1, store.serialize_cdr(
                T['carla_msgs/msg/CarlaEgoVehicleControl'](
                    header=header, throttle=0.1 * k, steer=0.2 * k - 1.0, brake=0.0,
                    hand_brake=False, reverse=False, gear=0, manual_gear_shift=False),
                'carla_msgs/msg/CarlaEgoVehicleControl'))
            strip = np.tile(np.arange(84 * 4, dtype=np.uint16) % 256, (84, 1)).astype(np.uint8)
            writer.write(dbg, t + 2, store.serialize_cdr(T['sensor_msgs/msg/Image'](
                header=header, height=84, width=336, encoding='mono8', is_bigendian=0,
                step=336, data=strip.reshape(-1)), 'sensor_msgs/msg/Image'))
        for index, (status, value) in enumerate((('terminated:off_track', -20.5),
                                                 ('truncated:time_limit', 310.25))):
            writer.write(end, 2 * 10**9 + index, store.serialize_cdr(T['std_msgs/msg/String'](
                data=f'{status};return={value};steps={100 + index};stamp_ns={index * 10**9}'),
                'std_msgs/msg/String'))


def test_plots_from_bag_and_episodes(tmp_path):
    bag = tmp_path / 'run'
    write_run_bag(bag)
    run = read_run([bag])
    assert len(run.frames) == 10 and len(run.commands) == 8 and len(run.stacks) == 8
    assert [e['return'] for e in episodes_from_bag(run)] == [-20.5, 310.25]

    log_dir = tmp_path / 'log'
    log_dir.mkdir()
    lines = [{'episode': i, 'return': float(i * i), 'length': 50 + i, 'stamp': 2.5 * i}
             for i in range(25)]
    (log_dir / 'episodes.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    assert read_episodes(log_dir / 'episodes.jsonl')[3] == lines[3]

    written = plot_all(tmp_path / 'plots', [bag], log_dir / 'episodes.jsonl', max_stacks=6)
    assert written == {'controls.png': {'frames': 10, 'commands': 8, 'missing': 2},
                       'frame_stacks.png': 6, 'returns.png': 25}
    for name in written:
        width, height = png_size(tmp_path / 'plots' / name)
        assert 300 <= width <= 2000 and 200 <= height <= 2000
        assert (tmp_path / 'plots' / name).stat().st_size > 5000

    # Command line: episode returns from the bag's episode_end messages, CSV also accepted.
    main(['plot_run', '--bag', str(bag), '-o', str(tmp_path / 'cli')])
    assert {p.name for p in (tmp_path / 'cli').iterdir()} == {
        'controls.png', 'frame_stacks.png', 'returns.png'}
    (log_dir / 'episodes.csv').write_text('episode,return,length,stamp\n0,1.5,10,\n1,2.5,11,3\n')
    assert read_episodes(log_dir / 'episodes.csv') == [
        {'episode': 0, 'return': 1.5, 'length': 10, 'stamp': None},
        {'episode': 1, 'return': 2.5, 'length': 11, 'stamp': 3.0}]
    with pytest.raises(SystemExit):
        main(['plot_run', '-o', str(tmp_path / 'none')])


def test_contact_sheet_falls_back_to_grey_camera_frames(tmp_path):
    bag = tmp_path / 'camera_only'
    store = typestore()
    T = store.types
    with Writer(bag, version=9) as writer:
        cam = writer.add_connection(f'{BASE}/rgb_front/image', 'sensor_msgs/msg/Image',
                                    typestore=store)
        for k in range(3):
            writer.write(cam, 10**9 + k, store.serialize_cdr(T['sensor_msgs/msg/Image'](
                header=T['std_msgs/msg/Header'](
                    stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=k), frame_id=''),
                height=48, width=64, encoding='bgra8', is_bigendian=0, step=256,
                data=np.full(48 * 256, 40 * k, np.uint8)), 'sensor_msgs/msg/Image'))
    written = plot_all(tmp_path / 'plots', [bag])
    assert written == {'controls.png': {'frames': 3, 'commands': 0, 'missing': 3},
                       'frame_stacks.png': 3}
    png_size(tmp_path / 'plots' / 'frame_stacks.png')
