"""Time the driver's stall watchdog after the camera stops, with and without sim time.

For each clock mode a driver process runs (random policy, CPU); each trial sends frames at
20 Hz for --burst seconds, stops, and times the first watchdog brake (a full brake whose stamp
is no frame's) from the moment the last frame was published, then the interval of the next
brakes. With use_sim_time:=true no /clock is published at all: the simulator is "dead", which
is exactly when the brake matters. Prints min / median / max of the first-brake delay, how
many trials met frame_timeout + 50 ms, and the repeat rate.

    source scripts/env.sh && python bench/watchdog_timing.py [--trials 20] [--frame-timeout 0.5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def start_driver(sim_time: bool, frame_timeout: float, log_dir: str) -> subprocess.Popen:
    """Start a driver process with a random policy."""
    args = [sys.executable, '-m', 'av_td3_ros.nodes.driver', '--ros-args',
            '-p', 'allow_random_policy:=true', '-p', 'device:=cpu',
            '-p', f'use_sim_time:={"true" if sim_time else "false"}',
            '-p', f'frame_timeout:={frame_timeout}', '-p', 'require_route:=false',
            '-p', 'publish_debug:=false']
    log = open(Path(log_dir) / f'driver_sim{int(sim_time)}.log', 'wb')
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                            start_new_session=True)


def run_mode(sim_time: bool, trials: int, frame_timeout: float, burst: float, repeats: int):
    """Return (first-brake delays in s, repeat intervals in s) for one clock mode."""
    import rclpy
    from carla_msgs.msg import CarlaEgoVehicleControl
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    with tempfile.TemporaryDirectory() as log_dir:
        driver = start_driver(sim_time, frame_timeout, log_dir)
        context = rclpy.Context()
        rclpy.init(context=context)
        node = Node('watchdog_bench', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_pub = node.create_publisher(Image, '/carla/ego_vehicle/rgb_front/image', reliable)
        odom_pub = node.create_publisher(Odometry, '/carla/ego_vehicle/odometry', reliable)
        arrivals = []  # (monotonic arrival, stamp (sec, nanosec), brake)
        node.create_subscription(
            CarlaEgoVehicleControl, '/carla/ego_vehicle/vehicle_control_cmd',
            lambda m: arrivals.append((time.monotonic(), (m.header.stamp.sec,
                                                          m.header.stamp.nanosec), m.brake)),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

        def spin_until(predicate, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not predicate():
                executor.spin_once(timeout_sec=0.002)
            return predicate()

        image = Image(height=60, width=80, encoding='bgra8', step=320)
        image.data = bytes(60 * 320)
        odometry = Odometry()
        odometry.pose.pose.orientation.w = 1.0
        first_delays, intervals = [], []
        try:
            if not spin_until(lambda: image_pub.get_subscription_count() > 0, 60.0):
                raise RuntimeError('the driver never subscribed')
            sec = 1_000_000
            for _ in range(trials + 1):  # the first trial warms up and is not counted
                frame_stamps = set()
                end = time.monotonic() + burst
                last_publish = None
                while time.monotonic() < end:
                    sec += 1
                    odom_pub.publish(odometry)
                    image.header.stamp.sec = sec
                    image_pub.publish(image)
                    last_publish = time.monotonic()
                    frame_stamps.add((sec, 0))
                    spin_until(lambda: False, 0.05)
                start = len(arrivals)

                def watchdog_brakes(start=start, stamps=frame_stamps, after=last_publish):
                    return [a for a in arrivals[start:]
                            if a[1] not in stamps and a[2] == 1.0 and a[0] > after]
                if not spin_until(lambda: len(watchdog_brakes()) >= repeats + 1,
                                  frame_timeout + 5.0):
                    raise RuntimeError('no watchdog brakes')
                brakes = watchdog_brakes()
                first_delays.append(brakes[0][0] - last_publish)
                times = [b[0] for b in brakes[:repeats + 1]]
                intervals.extend(np.diff(times))
            return first_delays[1:], intervals
        finally:
            executor.shutdown()
            node.destroy_node()
            context.try_shutdown()
            driver.terminate()
            driver.wait(10)


def main():
    """Measure both clock modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--trials', type=int, default=20)
    parser.add_argument('--frame-timeout', type=float, default=0.5)
    parser.add_argument('--burst', type=float, default=0.5,
                        help='seconds of 20 Hz frames before each stop')
    parser.add_argument('--repeats', type=int, default=5,
                        help='repeated brakes to time after the first')
    args = parser.parse_args()
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                          str(REPO / 'config' / 'fastdds_large_images.xml'))
    os.environ.setdefault('ROS_DOMAIN_ID', str(50 + os.getpid() % 50))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    target = args.frame_timeout + 0.05
    print(f'frame_timeout {args.frame_timeout} s, target first brake <= {target * 1e3:.0f} ms '
          f'after the last frame; {args.trials} trials per mode; load average '
          f'{os.getloadavg()[0]:.2f}')
    print('| use_sim_time | first brake min / median / max (ms) | within target | '
          'repeat interval median (ms) |')
    print('|---|---|---|---|')
    for sim_time in (False, True):
        delays, intervals = run_mode(sim_time, args.trials, args.frame_timeout, args.burst,
                                     args.repeats)
        ms = np.array(delays) * 1e3
        mode = 'true, no /clock published' if sim_time else 'false'
        print(f'| {mode} | {ms.min():.0f} / {np.median(ms):.0f} / '
              f'{ms.max():.0f} | {int((ms <= target * 1e3).sum())} of {len(ms)} | '
              f'{np.median(intervals) * 1e3:.0f} |', flush=True)


if __name__ == '__main__':
    main()
