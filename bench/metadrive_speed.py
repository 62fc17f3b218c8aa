"""Measure MetaDrive's steps/s: the client alone, and metadrive_bridge through ROS.

For each camera size: (1) `MetaDriveClient` in this process, timing only `step` calls over
`--steps` steps (resets excluded); (2) the metadrive_bridge node as a process, answered by
an in-process echo driver that sends one CarlaEgoVehicleControl per image, stamped with it,
for `--seconds` after a warm-up: ticks per wall second, resets included (episodes end at
`max_episode_steps` 200 or when the constant command leaves the road).

    source scripts/env.sh && python bench/metadrive_speed.py [--sizes 84x84,256x144]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THROTTLE = 0.3


def client_speed(width: int, height: int, steps: int, density: float) -> tuple[float, int]:
    """Return (steps/s of step() alone, episodes) for the client at this size."""
    from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveConfig
    client = MetaDriveClient(MetaDriveConfig(image_width=width, image_height=height,
                                             traffic_density=density, max_episode_steps=200,
                                             run_dir=tempfile.mkdtemp(prefix='md_bench_')))
    try:
        seed, episodes, busy, done = 0, 1, 0.0, 0
        client.reset(seed)
        client.step(0.0, THROTTLE, 0.0)  # first render after a reset is not typical
        while done < steps:
            start = time.perf_counter()
            state = client.step(0.0, THROTTLE, 0.0)
            busy += time.perf_counter() - start
            done += 1
            if state.done:
                seed, episodes = seed + 1, episodes + 1
                client.reset(seed)
        return done / busy, episodes
    finally:
        client.close()


def bridge_speed(width: int, height: int, seconds: float,
                 density: float) -> tuple[float, float, int]:
    """Return (ticks per wall second, 1 / median tick interval, episode starts).

    The first counts resets (0.5-4 s each); the second is the rate between them.
    """
    import rclpy
    from carla_msgs.msg import CarlaEgoVehicleControl
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    run_dir = tempfile.mkdtemp(prefix='md_bench_')
    env = dict(os.environ, ROS_DOMAIN_ID=str(150 + os.getpid() % 80),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    log = open(Path(run_dir) / 'bridge.log', 'wb')
    bridge = subprocess.Popen(
        [sys.executable, '-m', 'av_td3_ros.nodes.metadrive_bridge', '--ros-args',
         '--params-file', str(REPO / 'config' / 'metadrive_bridge.yaml'),
         '-p', f'image_width:={width}', '-p', f'image_height:={height}',
         '-p', f'traffic_density:={density}', '-p', 'max_episode_steps:=200',
         '-p', f'run_dir:={run_dir}'], env=env, stdout=log, stderr=log, cwd=str(REPO))
    os.environ['ROS_DOMAIN_ID'] = env['ROS_DOMAIN_ID']
    rclpy.init()
    node = Node('metadrive_bench_echo')
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
    command = node.create_publisher(CarlaEgoVehicleControl,
                                    '/carla/ego_vehicle/vehicle_control_cmd', qos)
    frames, starts = [], []

    def answer(image):
        frames.append(time.monotonic())
        msg = CarlaEgoVehicleControl(throttle=THROTTLE)
        msg.header.stamp = image.header.stamp
        command.publish(msg)

    node.create_subscription(Image, '/carla/ego_vehicle/rgb_front/image', answer, qos)
    node.create_subscription(Header, '/av_td3/ego_vehicle/episode_start',
                             lambda msg: starts.append(msg), 10)
    try:
        deadline = time.monotonic() + 180.0
        while not frames and time.monotonic() < deadline:
            command.publish(CarlaEgoVehicleControl(throttle=THROTTLE))  # unstamped: one tick
            rclpy.spin_once(node, timeout_sec=2.0)
        warm = time.monotonic() + 5.0
        while time.monotonic() < warm + seconds:
            rclpy.spin_once(node, timeout_sec=1.0)
        counted = [t for t in frames if warm <= t < warm + seconds]
        gaps = sorted(b - a for a, b in zip(counted, counted[1:], strict=False))
        return len(counted) / seconds, 1.0 / gaps[len(gaps) // 2], len(starts)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        bridge.terminate()
        bridge.wait(30)
        log.close()


def main():
    """Print steps/s for each size."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='84x84,256x144')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--seconds', type=float, default=40.0)
    parser.add_argument('--traffic-density', type=float, default=0.1)
    args = parser.parse_args()
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.split('x'))
        alone, episodes = client_speed(width, height, args.steps, args.traffic_density)
        print(f'{size}: client step() alone {alone:.1f} steps/s ({args.steps} steps, '
              f'{episodes} episodes)', flush=True)
        ticks, steady, starts = bridge_speed(width, height, args.seconds, args.traffic_density)
        print(f'{size}: bridge + echo driver over ROS {ticks:.1f} steps/s ({args.seconds:.0f} s, '
              f'resets included, {starts} episode starts seen); {steady:.1f} steps/s from the '
              'median tick interval', flush=True)


if __name__ == '__main__':
    main()
