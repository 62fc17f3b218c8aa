"""Soak: run the stand-in simulator and the driver (optionally the trainer) for N minutes.

Reports, after a warm-up, each process's resident memory growth, the frame -> command latency
p50 / p99 per minute (and its drift from the first to the last minute) and the frames that
got no command. The simulator runs asynchronously at --rate Hz like a free-running camera,
so a slow or stuck driver shows up as dropped frames instead of slowing the world down.

Latency is measured outside both processes: the arrival of the tick's camera_info (published
with the frame, same stamp) to the arrival of the command carrying that stamp.

    source scripts/env.sh && nice -n 5 python bench/soak.py --minutes 30 [--trainer]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float | None:
    """Return a process's resident set size in MiB (None once it has exited)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def start_processes(args, work: Path) -> dict[str, subprocess.Popen]:
    """Start the simulator, the driver and (with --trainer) the trainer."""
    config = REPO / 'config'
    common = ['-p', 'feature_norm:=layernorm_tanh']
    commands = {
        'sim_bridge': ['av_td3_ros.nodes.sim_bridge', '--ros-args', '--params-file',
                       str(config / 'sim_bridge.yaml'), '-p', 'synchronous_mode:=false',
                       '-p', f'publish_rate:={args.rate}', '-p', 'max_episode_steps:=1000'],
        'driver': ['av_td3_ros.nodes.driver', '--ros-args', '-r', '__ns:=/ego_vehicle',
                   '--params-file', str(config / 'driver.yaml'), *common,
                   '-p', 'device:=cpu', '-p', 'use_sim_time:=true'],
    }
    if args.trainer:
        commands['driver'] += ['-p', 'mode:=explore', '-p', 'learning_starts:=1000',
                               '-p', f'checkpoint:={work / "run" / "checkpoints"}']
        commands['trainer'] = ['av_td3_ros.nodes.trainer', '--ros-args', '--params-file',
                               str(config / 'trainer_sim.yaml'), *common,
                               '-p', f'run_dir:={work / "run"}', '-p', 'device:=cpu',
                               '-p', 'learning_starts:=1000', '-p', 'use_sim_time:=true']
    else:
        commands['driver'] += ['-p', 'allow_random_policy:=true']
    processes = {}
    for name, command in commands.items():
        log = open(work / f'{name}.log', 'wb')
        processes[name] = subprocess.Popen([sys.executable, '-m', *command], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=str(REPO),
                                           start_new_session=True)
    return processes


def percentile_row(latencies_ms) -> tuple[float, float]:
    """Return (p50, p99) of a window's latencies (NaN when empty)."""
    if not len(latencies_ms):
        return float('nan'), float('nan')
    return (float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99)))


def main():
    """Run the soak and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=30.0)
    parser.add_argument('--warmup', type=float, default=None,
                        help='minutes left out of the figures (default 10 %%, at least 1)')
    parser.add_argument('--rate', type=float, default=20.0, help='camera rate (Hz)')
    parser.add_argument('--trainer', action='store_true', help='also run the trainer '
                        '(driver in explore mode, hot-reloading its checkpoints)')
    parser.add_argument('--sample', type=float, default=10.0, help='RSS sample period (s)')
    parser.add_argument('--json', type=Path, help='also write the raw figures here')
    args = parser.parse_args()
    warmup_s = 60.0 * (args.warmup if args.warmup is not None
                       else max(1.0, 0.1 * args.minutes))
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                          str(REPO / 'config' / 'fastdds_large_images.xml'))
    os.environ.setdefault('ROS_DOMAIN_ID', str(150 + os.getpid() % 80))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('OMP_NUM_THREADS', '1')

    import rclpy
    from carla_msgs.msg import CarlaEgoVehicleControl
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo

    with tempfile.TemporaryDirectory(prefix='soak_') as tmp:
        work = Path(tmp)
        processes = start_processes(args, work)
        rclpy.init()
        node = Node('soak_monitor')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        frames = {}  # stamp -> wall arrival of its camera_info
        answered = {}  # stamp -> wall arrival of its command
        extra_commands = [0]  # watchdog brakes and other commands for no known frame
        diagnostics = {}

        def key(stamp):
            return stamp.sec * 1_000_000_000 + stamp.nanosec

        def on_info(msg):
            frames.setdefault(key(msg.header.stamp), time.monotonic())

        def on_command(msg):
            stamp = key(msg.header.stamp)
            if stamp in answered or stamp not in frames:
                extra_commands[0] += 1
            else:
                answered[stamp] = time.monotonic()

        def on_diagnostics(array):
            for status in array.status:
                if 'driver' in status.name:
                    diagnostics.update({kv.key: kv.value for kv in status.values})

        node.create_subscription(CameraInfo, '/carla/ego_vehicle/rgb_front/camera_info',
                                 on_info, reliable)
        node.create_subscription(CarlaEgoVehicleControl,
                                 '/carla/ego_vehicle/vehicle_control_cmd', on_command, reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        start = time.monotonic()
        end = start + 60.0 * args.minutes
        rss = {name: [] for name in processes}  # name -> [(t, MiB)]
        next_sample = start
        exited = {}
        try:
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
                now = time.monotonic()
                if now >= next_sample:
                    next_sample += args.sample
                    for name, process in processes.items():
                        if process.poll() is not None and name not in exited:
                            exited[name] = (process.returncode, now - start)
                        value = rss_mib(process.pid)
                        if value is not None:
                            rss[name].append((now - start, value))
                    done = (now - start) / 60.0
                    if int(done) != int((now - args.sample - start) / 60.0):
                        print(f'{done:5.1f} min: frames {len(frames)}, answered '
                              f'{len(answered)}; RSS '
                              + ', '.join(f'{n} {v[-1][1]:.0f} MiB' for n, v in rss.items()
                                          if v), flush=True)
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(2)
            for process in processes.values():
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            logs = {name: (work / f'{name}.log').read_text(errors='replace')
                    for name in processes}

    report = {'minutes': args.minutes, 'warmup_minutes': warmup_s / 60.0, 'rate_hz': args.rate,
              'trainer': args.trainer, 'load_average_end': os.getloadavg(), 'exited': exited}
    nodes = 'sim + driver + trainer' if args.trainer else 'sim + driver (random policy)'
    print(f'\nsoak: {args.minutes:g} min (warm-up {warmup_s / 60:.1f} min left out), camera '
          f'{args.rate:g} Hz asynchronous, {nodes}, load average at the end '
          f'{os.getloadavg()[0]:.2f}')
    print('\n| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth | max (MiB) |')
    print('|---|---|---|---|---|')
    report['rss'] = {}
    for name, samples in rss.items():
        after = [v for t, v in samples if t >= warmup_s]
        if not after:
            continue
        growth = (after[-1] - after[0]) / after[0] * 100.0
        report['rss'][name] = {'after_warmup': after[0], 'end': after[-1], 'growth_pct': growth,
                               'max': max(after), 'samples': samples}
        print(f'| {name} | {after[0]:.1f} | {after[-1]:.1f} | {growth:+.2f} % | '
              f'{max(after):.1f} |')

    measured = sorted(s for s, t in frames.items() if t - start >= warmup_s
                      and t < end - 2.0)  # the last 2 s may still be in flight
    minutes = {}
    for stamp in measured:
        minute = int((frames[stamp] - start) // 60)
        window = minutes.setdefault(minute, {'frames': 0, 'latencies': []})
        window['frames'] += 1
        if stamp in answered:
            window['latencies'].append((answered[stamp] - frames[stamp]) * 1e3)
    print('\n| minute | frames | dropped | latency p50 (ms) | p99 (ms) |')
    print('|---|---|---|---|---|')
    report['minutes_table'] = []
    for minute, window in sorted(minutes.items()):
        p50, p99 = percentile_row(window['latencies'])
        dropped = window['frames'] - len(window['latencies'])
        report['minutes_table'].append({'minute': minute, 'frames': window['frames'],
                                        'dropped': dropped, 'p50': p50, 'p99': p99})
        print(f'| {minute} | {window["frames"]} | {dropped} | {p50:.2f} | {p99:.2f} |')
    rows = report['minutes_table']
    total = sum(r['frames'] for r in rows)
    dropped = sum(r['dropped'] for r in rows)
    if rows:
        first, last = rows[0], rows[-1]
        print(f'\nlatency drift first -> last minute: p50 {first["p50"]:.2f} -> '
              f'{last["p50"]:.2f} ms, p99 {first["p99"]:.2f} -> {last["p99"]:.2f} ms; '
              f'dropped {dropped} of {total} frames ({100.0 * dropped / max(total, 1):.2f} %)')
    report.update(frames=total, dropped=dropped, extra_commands=extra_commands[0],
                  driver_diagnostics=diagnostics)
    print('driver diagnostics at the end: ' + ', '.join(
        f'{k} {diagnostics.get(k, "?")}' for k in ('frames_processed', 'bad_frames',
                                                   'callback_errors', 'watchdog_brakes',
                                                   'callback_ms_mean', 'model')))
    tracebacks = {name: log.count('Traceback') for name, log in logs.items()}
    print(f'process exits during the soak: {exited or "none"}; tracebacks in logs: '
          f'{tracebacks}')
    report['tracebacks'] = tracebacks
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
