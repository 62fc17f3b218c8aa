"""Run the main job without CARLA: stand-in simulator + driver (+ trainer), with a summary.

    python -m av_td3_ros.tools.demo               # sim + driver with the shipped policy, 60 s
    python -m av_td3_ros.tools.demo --random      # the same with a randomly initialised policy
    python -m av_td3_ros.tools.demo --train       # sim + driver (explore) + trainer, learning
    python -m av_td3_ros.tools.demo --checkpoint runs/sim/checkpoints --duration 300

Starts the nodes of launch/sim_drive.launch.xml (or sim_train.launch.xml) as `ros2 launch`
would, watches them from a monitor node and ends with a summary: frames, commands,
camera->command latency, episodes and their returns.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from av_td3_ros.task.episode_end import parse_episode_end
from av_td3_ros.tools.launch_runner import LaunchedNode, parse_launch_file, resolve_launch_path


class Monitor:
    """Count frames and commands, time camera->command, collect episode ends."""

    def __init__(self, role: str):
        """Create the monitor node and its subscriptions."""
        import rclpy
        from carla_msgs.msg import CarlaEgoVehicleControl
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        rclpy.init(args=[])
        self.node = Node('demo_monitor')
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.frame_times: dict[tuple, float] = {}
        self.latencies_ms: list[float] = []
        self.frames = 0
        self.commands = 0
        self.brakes = 0
        self.episodes: list[str] = []
        self.node.create_subscription(Image, f'/carla/{role}/rgb_front/image', self.on_frame,
                                      reliable)
        self.node.create_subscription(CarlaEgoVehicleControl,
                                      f'/carla/{role}/vehicle_control_cmd', self.on_command,
                                      reliable)
        self.node.create_subscription(String, f'/av_td3/{role}/episode_end', self.on_end,
                                      reliable)
        self._rclpy = rclpy

    def on_frame(self, msg):
        """Remember when each frame was seen."""
        self.frames += 1
        self.frame_times[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.monotonic()
        if len(self.frame_times) > 1000:
            for key in list(self.frame_times)[:500]:
                del self.frame_times[key]

    def on_command(self, msg):
        """Count a command; time it against the frame with the same stamp."""
        self.commands += 1
        self.brakes += msg.brake >= 1.0
        seen = self.frame_times.pop((msg.header.stamp.sec, msg.header.stamp.nanosec), None)
        if seen is not None:
            self.latencies_ms.append((time.monotonic() - seen) * 1e3)

    def on_end(self, msg):
        """Keep the simulator's episode summaries."""
        self.episodes.append(msg.data)

    def spin_for(self, seconds: float):
        """Process callbacks for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._rclpy.spin_once(self.node, timeout_sec=min(0.1, end - time.monotonic()))

    def close(self):
        """Shut the monitor down."""
        self.node.destroy_node()
        self._rclpy.try_shutdown()


DEFAULT_POLICY = 'camera_policy.safetensors'  # in models/ (share/av_td3_ros/models/ installed)


def default_policy_path() -> Path:
    """Return the shipped policy: the source tree's copy, else the installed one."""
    source = Path(__file__).resolve().parents[2] / 'models' / DEFAULT_POLICY
    if source.exists():
        return source
    from av_td3_ros.tools.launch_runner import find_package_share
    return Path(find_package_share('av_td3_ros')) / 'models' / DEFAULT_POLICY


def episode_lines(episode_ends: list[str]) -> list[str]:
    """Return one summary line per episode_end text: return, steps, lap completed or why not."""
    lines = []
    for number, text in enumerate(episode_ends, start=1):
        end = parse_episode_end(text)
        episode_return = float('nan') if end.episode_return is None else end.episode_return
        steps = '?' if end.steps is None else end.steps
        lap = end.reason == 'lap_complete'
        lines.append(f'episode {number}: return {episode_return:.1f}, {steps} steps, lap '
                     + ('completed' if lap else f'not completed ({end.reason})'))
    return lines


def episode_returns(episode_ends: list[str]) -> list[float]:
    """Parse `return=<x>` out of episode_end messages."""
    ends = [parse_episode_end(text) for text in episode_ends]
    return [end.episode_return for end in ends if end.episode_return is not None]


def trainer_summary(episodes_file: Path) -> str:
    """Summarise the trainer's episodes.jsonl: count, reasons, first vs last returns."""
    import json
    try:
        records = [json.loads(line) for line in episodes_file.read_text().splitlines()
                   if line.strip()]
    except FileNotFoundError:
        return 'trainer wrote no episodes yet'
    if not records:
        return 'trainer finished no episode yet'
    returns = [r['return'] for r in records]
    reasons = Counter(record['reason'] for record in records)
    window = max(1, min(20, len(returns) // 2))
    counts = ', '.join(f'{reason} {count}' for reason, count in reasons.items())
    return (f'trainer episodes: {len(records)} ({counts}); mean shaped return of the first '
            f'{window}: {np.mean(returns[:window]):.1f}, '
            f'of the last {window}: {np.mean(returns[-window:]):.1f}; updates '
            f'{records[-1].get("updates", "?")}')


def main(argv=None) -> int:
    """Run the demo and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--train', action='store_true',
                        help='also run the trainer (driver in explore mode)')
    parser.add_argument('--duration', type=float, default=60.0,
                        help='seconds to run (the shipped policy laps the stand-in in ~15 s '
                             'at ~60 frames/s on 2 cores)')
    parser.add_argument('--checkpoint', default='',
                        help='policy file or directory (default: the shipped camera policy, '
                             'models/camera_policy.safetensors)')
    parser.add_argument('--random', action='store_true',
                        help='drive a randomly initialised policy instead')
    parser.add_argument('--run-dir', default='runs/demo', help='trainer run directory')
    parser.add_argument('--learning-starts', type=int, default=300,
                        help='random transitions before the first update (--train)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--role', default='ego_vehicle')
    parser.add_argument('--quiet', action='store_true', help='do not echo node output')
    args = parser.parse_args(argv)

    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    arguments = {'role_name': args.role, 'seed': str(args.seed)}
    if args.train:
        launch_file = 'sim_train.launch.xml'
        arguments.update(run_dir=args.run_dir, learning_starts=str(args.learning_starts))
    else:
        launch_file = 'sim_drive.launch.xml'
        checkpoint = '' if args.random else args.checkpoint or str(default_policy_path())
        if checkpoint:
            from av_td3_ros.policy.checkpoint import PolicySpec, read_metadata
            try:  # the driver must expect the checkpoint's CNN feature normalisation
                metadata = read_metadata(checkpoint)
                arguments['feature_norm'] = PolicySpec.from_metadata(metadata) \
                    .network.feature_norm
            except ValueError:
                pass  # a directory a trainer fills later, or a bad file the driver reports
        arguments.update(checkpoint=checkpoint,
                         allow_random_policy='false' if checkpoint else 'true')
    description = parse_launch_file(resolve_launch_path(launch_file), arguments)
    env = dict(os.environ, **description.environment, PYTHONUNBUFFERED='1')
    os.environ.update(description.environment)  # the monitor uses the same transport
    print(f'[demo] {launch_file} {" ".join(f"{k}:={v}" for k, v in arguments.items())} '
          f'for {args.duration:.0f} s', flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    nodes = []
    monitor = Monitor(args.role)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='av_td3_demo_') as workdir:
        try:
            for spec in description.nodes:
                nodes.append(LaunchedNode(spec, env, Path(workdir),
                                          echo=not args.quiet))
            next_report = start + 10.0
            while not stop.is_set() and time.monotonic() - start < args.duration:
                monitor.spin_for(0.5)
                if any(node.process.poll() is not None for node in nodes):
                    print('[demo] a node exited early; stopping', flush=True)
                    break
                if time.monotonic() >= next_report:
                    next_report += 10.0
                    recent = monitor.latencies_ms[-200:]
                    print(f'[demo] t={time.monotonic() - start:5.0f}s frames {monitor.frames} '
                          f'commands {monitor.commands} latency '
                          f'{np.mean(recent) if recent else float("nan"):.1f} ms episodes '
                          f'{len(monitor.episodes)}', flush=True)
        finally:
            for node in reversed(nodes):
                node.stop()
            monitor.close()
    elapsed = time.monotonic() - start
    returns = episode_returns(monitor.episodes)
    latencies = np.asarray(monitor.latencies_ms) if monitor.latencies_ms else np.array([np.nan])
    print('[demo] summary ---------------------------------------------------')
    print(f'[demo] ran {elapsed:.0f} s: {monitor.frames} camera frames, {monitor.commands} '
          f'control commands ({monitor.brakes} full brakes), '
          f'{monitor.frames / max(elapsed, 1e-9):.1f} frames/s')
    print(f'[demo] camera->command latency seen by the monitor: mean '
          f'{np.nanmean(latencies):.1f} ms, p50 {np.nanpercentile(latencies, 50):.1f} ms, '
          f'p99 {np.nanpercentile(latencies, 99):.1f} ms over {len(monitor.latencies_ms)} '
          'frames')
    print(f'[demo] episodes ended: {len(monitor.episodes)}; CarRacing returns: '
          + (', '.join(f'{r:.1f}' for r in returns) if returns else 'none finished yet'))
    for line in episode_lines(monitor.episodes):
        print(f'[demo]   {line}')
    if args.train:
        checkpoints = sorted(Path(args.run_dir, 'checkpoints').glob('policy_*.safetensors'))
        print(f'[demo] trainer run dir {args.run_dir}: {len(checkpoints)} policy checkpoints'
              + (f', newest {checkpoints[-1].name}' if checkpoints else ''))
        print(f'[demo] {trainer_summary(Path(args.run_dir, "episodes.jsonl"))}')
    return 0 if monitor.commands > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
