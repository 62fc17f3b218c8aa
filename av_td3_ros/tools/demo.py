"""Run the main job without CARLA: stand-in simulator + driver (+ trainer), with a summary.

    python -m av_td3_ros.tools.demo               # sim + driver with the shipped policy, 60 s
    python -m av_td3_ros.tools.demo --random      # the same with a randomly initialised policy
    python -m av_td3_ros.tools.demo --train       # sim + driver (explore) + trainer, learning
    python -m av_td3_ros.tools.demo --checkpoint runs/sim/checkpoints --duration 300
    python -m av_td3_ros.tools.demo --world metadrive   # MetaDrive + the shipped student

Starts the nodes of launch/sim_drive.launch.xml (sim_train.launch.xml, or with
`--world metadrive` metadrive_drive.launch.xml) as `ros2 launch` would, watches them from a
monitor node and ends with a summary: frames, commands, camera->command latency, episodes
and their returns (MetaDrive: outcome, steps, route completion and the mean line of
`evaluate_policy --world metadrive`).
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


# The shipped policies, in models/ (share/av_td3_ros/models/ installed).
DEFAULT_POLICY = 'camera_policy.safetensors'
METADRIVE_POLICY = 'metadrive_camera_policy.safetensors'
LAUNCH_FILES = {'carracing': 'sim_drive.launch.xml', 'metadrive': 'metadrive_drive.launch.xml'}
DEFAULT_DURATION = {'carracing': 60.0, 'metadrive': 240.0}
# MetaDrive runs ~15-20 steps/s at 84x84 with the driver on 2 cores; episodes take 300-1000
# steps, so 240 s ends about three.
METADRIVE_EPISODES = 3


def default_policy_path(name: str = DEFAULT_POLICY) -> Path:
    """Return the shipped policy `name`: the source tree's copy, else the installed one."""
    source = Path(__file__).resolve().parents[2] / 'models' / name
    if source.exists():
        return source
    from av_td3_ros.tools.launch_runner import find_package_share
    return Path(find_package_share('av_td3_ros')) / 'models' / name


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


def metadrive_results(episode_ends: list[str], first_seed: int) -> tuple[list, list[str]]:
    """Return the MetaDriveResults of metadrive_bridge episode_end texts (episode e: seed + e).

    Texts that do not read as one (a bridge of another version) come back apart, as they are.
    """
    from av_td3_ros.sim.metadrive_results import result_from_episode_end
    results, unreadable = [], []
    for episode, text in enumerate(episode_ends):
        try:
            results.append(result_from_episode_end(first_seed + episode, text))
        except ValueError:
            unreadable.append(text)
    return results, unreadable


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
    parser.add_argument('--world', choices=tuple(LAUNCH_FILES), default='carracing',
                        help='the CarRacing stand-in, or MetaDrive (needs its venv: '
                             'scripts/setup.sh --metadrive)')
    parser.add_argument('--train', action='store_true',
                        help='also run the trainer (driver in explore mode; carracing only)')
    parser.add_argument('--duration', type=float,
                        help='seconds to run (default: carracing 60, the shipped policy laps '
                             'the stand-in in ~15 s at ~60 frames/s on 2 cores; metadrive '
                             f'{DEFAULT_DURATION["metadrive"]:.0f})')
    parser.add_argument('--episodes', type=int,
                        help='stop after this many episodes, or at --duration if sooner '
                             f'(default: carracing none, metadrive {METADRIVE_EPISODES})')
    parser.add_argument('--max-episode-steps', type=int,
                        help="metadrive: the bridge's time limit in steps (default: its 1000)")
    parser.add_argument('--checkpoint', default='',
                        help='policy file or directory (default: the shipped camera policy, '
                             f'models/{DEFAULT_POLICY}; metadrive: models/{METADRIVE_POLICY})')
    parser.add_argument('--random', action='store_true',
                        help='drive a randomly initialised policy instead')
    parser.add_argument('--run-dir', default='runs/demo', help='trainer run directory')
    parser.add_argument('--learning-starts', type=int, default=300,
                        help='random transitions before the first update (--train)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--role', default='ego_vehicle')
    parser.add_argument('--quiet', action='store_true', help='do not echo node output')
    args = parser.parse_args(argv)
    metadrive = args.world == 'metadrive'
    if metadrive and args.train:
        parser.error('--train runs the stand-in trainer: not with --world metadrive')
    if not metadrive and args.max_episode_steps is not None:
        parser.error('--max-episode-steps is for --world metadrive')
    if args.duration is None:
        args.duration = DEFAULT_DURATION[args.world]
    if args.episodes is None and metadrive:
        args.episodes = METADRIVE_EPISODES
    if metadrive:
        from av_td3_ros.sim.metadrive_client import default_python
        if not default_python().is_file():
            print(f'[demo] no MetaDrive venv ({default_python()}): run '
                  '`bash scripts/setup.sh --metadrive`', file=sys.stderr)
            return 2

    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    arguments = {'role_name': args.role, 'seed': str(args.seed)}
    if args.max_episode_steps is not None:
        arguments['max_episode_steps'] = str(args.max_episode_steps)
    if args.train:
        launch_file = 'sim_train.launch.xml'
        arguments.update(run_dir=args.run_dir, learning_starts=str(args.learning_starts))
    else:
        launch_file = LAUNCH_FILES[args.world]
        shipped = default_policy_path(METADRIVE_POLICY if metadrive else DEFAULT_POLICY)
        checkpoint = '' if args.random else args.checkpoint or str(shipped)
        if not (args.random or args.checkpoint or shipped.exists()):
            print(f'[demo] no shipped policy at {shipped}: pass --checkpoint PATH, or --random',
                  file=sys.stderr)
            return 2
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
            while (not stop.is_set() and time.monotonic() - start < args.duration
                   and (args.episodes is None or len(monitor.episodes) < args.episodes)):
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
    if metadrive:
        from av_td3_ros.sim.metadrive_results import summary_line
        results, unreadable = metadrive_results(monitor.episodes, args.seed)
        print(f'[demo] episodes ended: {len(monitor.episodes)}')
        for result in results:
            print(f'[demo]   {result.line()}')
        for text in unreadable:
            print(f'[demo]   episode_end without return, steps or route completion: {text}')
        print(f'[demo] {summary_line(results)}')
    else:
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
