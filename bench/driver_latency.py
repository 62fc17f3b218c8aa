"""Measure camera-stamp -> control-command latency of the driver against an echo node.

In one run, publish 800x600 (or --width x --height) bgra8 frames at 20 Hz, stamped with
the system clock, first to an echo node (answers each frame with a tiny std_msgs/Header
carrying the frame's stamp) and then to the driver node (answers with
CarlaEgoVehicleControl); print p50/p99 latency for both, their difference, and the driver's
per-stage cost from its /diagnostics. Both run as separate processes with the project's
Fast DDS shared-memory profile; the echo node shares the driver's QoS (best effort, keep
last 1), so the difference is the driver's own work.

    source scripts/env.sh && python bench/driver_latency.py [--frames 400] [--rate 20] \
        [--backends auto,torch,onnxruntime] [--warm-up-leads 0,0.002]
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


def run_echo():
    """Run the echo node: one Header back per Image, nothing else."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = Node('echo')
    publisher = node.create_publisher(Header, '/bench/echo', QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def on_image(msg):
        publisher.publish(Header(stamp=msg.header.stamp))

    node.create_subscription(Image, '/carla/ego_vehicle/rgb_front/image', on_image,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def percentiles(values):
    """Return (p50, p99, count) of a list of latencies in ms."""
    array = np.asarray(values)
    return float(np.percentile(array, 50)), float(np.percentile(array, 99)), len(array)


def measure(node, executor, image_pub, route_pub, odom_pub, replies, frames, rate,
            width=800, height=600):
    """Publish `frames` frames at `rate` Hz; return latencies (ms) of the answered ones."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from sensor_msgs.msg import Image

    path = PathMsg()
    for i in range(100):
        pose = PoseStamped()
        pose.pose.position.x = 2.0 * i
        path.poses.append(pose)
    route_pub.publish(path)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 4), np.uint8)
    msg = Image(height=height, width=width, encoding='bgra8', step=4 * width)
    msg.data = pixels.tobytes()
    odometry = Odometry()
    odometry.pose.pose.orientation.w = 1.0
    sent = {}
    replies.clear()
    period = 1.0 / rate
    next_time = time.monotonic()
    for _ in range(frames):
        odom_pub.publish(odometry)
        now_ns = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now_ns
        image_pub.publish(msg)
        next_time += period
        while time.monotonic() < next_time:
            executor.spin_once(timeout_sec=max(next_time - time.monotonic(), 0.0))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    latencies = [(received - sent[key]) / 1e6 for key, received in replies if key in sent]
    return latencies, len(sent)


def main():
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=400)
    parser.add_argument('--rate', type=float, default=20.0)
    parser.add_argument('--warmup', type=int, default=40)
    parser.add_argument('--width', type=int, default=800, help='camera width (bridge: 800)')
    parser.add_argument('--height', type=int, default=600, help='camera height (bridge: 600)')
    parser.add_argument('--backends', default='auto,torch',
                        help='driver backends to measure, comma-separated: auto (the '
                             "driver's default), torch, onnxruntime")
    parser.add_argument('--warm-up-leads', default='0.002',
                        help="driver warm_up_lead values (s), comma-separated, e.g. 0,0.002: "
                             'each backend is measured with each')
    parser.add_argument('--echo', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        return run_echo()

    import rclpy
    from carla_msgs.msg import CarlaEgoVehicleControl
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get('ROS_DOMAIN_ID', '91'),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONPATH=str(REPO),
               FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / 'config' / 'fastdds_large_images.xml'),
               ROS_LOG_DIR=tempfile.mkdtemp(prefix='bench_ros_log_'))
    env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_LOG_DIR')})
    rclpy.init()
    node = Node('bench_camera')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, '/carla/ego_vehicle/rgb_front/image', reliable)
    odom_pub = node.create_publisher(Odometry, '/carla/ego_vehicle/odometry', reliable)
    route_pub = node.create_publisher(PathMsg, '/carla/ego_vehicle/waypoints', QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    replies = []

    def on_reply(msg):
        stamp = msg.stamp if isinstance(msg, Header) else msg.header.stamp
        replies.append(((stamp.sec, stamp.nanosec), time.time_ns()))

    node.create_subscription(Header, '/bench/echo', on_reply, reliable)
    node.create_subscription(CarlaEgoVehicleControl, '/carla/ego_vehicle/vehicle_control_cmd',
                             on_reply, reliable)
    diagnostics = []
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)

    results = {}
    backends = args.backends.split(',')
    targets = {'echo': [sys.executable, __file__, '--echo']}
    leads = [float(lead) for lead in args.warm_up_leads.split(',')]
    for backend in backends:
        for lead in leads:
            name = f'driver:{backend}' + (f':warm{lead * 1e3:g}ms' if len(leads) > 1 else '')
            targets[name] = [
                sys.executable, '-m', 'av_td3_ros.nodes.driver', '--ros-args',
                '--params-file', str(REPO / 'config' / 'driver.yaml'),
                '-p', 'allow_random_policy:=true', '-p', 'device:=cpu',
                '-p', f'backend:={backend}', '-p', f'warm_up_lead:={lead}',
                '-p', 'publish_debug:=false', '-p', 'frame_timeout:=5.0']
    for name, command in targets.items():
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while image_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            time.sleep(3.0)  # let the node finish importing torch before timing
            size = {'width': args.width, 'height': args.height}
            measure(node, executor, image_pub, route_pub, odom_pub, replies, args.warmup,
                    args.rate, **size)
            diagnostics.clear()
            latencies, sent = measure(node, executor, image_pub, route_pub, odom_pub, replies,
                                      args.frames, args.rate, **size)
            results[name] = (latencies, sent)
            if name.startswith('driver'):
                executor.spin_once(timeout_sec=1.5)
                stages = {}
                for array in diagnostics[-1:]:
                    for value in array.status[0].values:
                        if value.key.endswith('_ms_mean'):
                            stages[value.key[:-8]] = float(value.value)
                results[f'stages {name}'] = stages
        finally:
            process.send_signal(2)
            process.wait(timeout=10)

    print(f'driver latency benchmark: {args.frames} frames {args.width}x{args.height} bgra8 '
          f'at {args.rate} Hz, '
          f'{os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d")}')
    print(f'{"target":20s} {"answered":>9s} {"p50 ms":>8s} {"p99 ms":>8s} {"vs echo p50":>12s} '
          f'{"p99":>7s}')
    echo50, echo99, _ = percentiles(results['echo'][0])
    for name in targets:
        latencies, sent = results[name]
        p50, p99, count = percentiles(latencies)
        print(f'{name:20s} {count:>4d}/{sent:<4d} {p50:8.2f} {p99:8.2f} {p50 - echo50:+12.2f} '
              f'{p99 - echo99:+7.2f}')
    print('targets: driver p50 <= echo + 2 ms, p99 <= echo + 5 ms')
    for name in targets:
        stages = results.get(f'stages {name}', {})
        if stages:
            print(f'{name} per-stage mean cost (ms, from its /diagnostics):')
            for stage, cost in stages.items():
                print(f'  {stage:12s} {cost:7.3f}')
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == '__main__':
    main()
