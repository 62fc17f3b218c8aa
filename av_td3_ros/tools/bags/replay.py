"""Publish a rosbag2 bag (mcap or sqlite3) into the live ROS graph.

    bag_replay BAG [--rate R] [--topics T ...] [--exclude T ...] [--clock]
               [--as-fast-as-consumed [--role ego_vehicle] [--consume-timeout S]
                                      [--sync-node auto|/ns/name|""]]
               [--wait-for T ...] [--delay S] [--ros-args ...]

What the player does is in `player.py`. With --as-fast-as-consumed the driver is found by its
camera subscription (--sync-node auto); when no node or several unrelated ones subscribe, the
player stops naming them. Latched topics (recorded transient-local, or --latched) are
re-published transient-local. --clock publishes each message's bag time on /clock first (and
the bag's own /clock is not replayed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.utilities import remove_ros_args

from av_td3_ros.tools.bags.player import SYNC_AUTO, ReplayConfig, SyncNodeError, replay
from av_td3_ros.tools.bags.record import default_latched
from av_td3_ros.tools.bags.types import UnknownTypeError


def parse_args(argv: list[str]) -> ReplayConfig:
    """Parse the command line (without ROS arguments) into a ReplayConfig."""
    parser = argparse.ArgumentParser(prog='bag_replay', description=__doc__.split('\n')[0])
    parser.add_argument('bag', type=Path, help='bag directory (mcap or sqlite3)')
    parser.add_argument('-r', '--rate', type=float, default=1.0,
                        help='playback speed multiplier (default 1.0)')
    parser.add_argument('-t', '--topics', nargs='+', metavar='TOPIC', default=(),
                        help='replay only these topics')
    parser.add_argument('-x', '--exclude', nargs='+', metavar='TOPIC', default=(),
                        help='do not replay these topics')
    parser.add_argument('--clock', action='store_true',
                        help='publish the bag time on /clock')
    parser.add_argument('--latched', nargs='*', metavar='TOPIC',
                        help='topics to publish transient-local (default: the bridge\'s '
                             'latched topics; recorded transient-local topics always are)')
    parser.add_argument('--as-fast-as-consumed', action='store_true',
                        help='send each camera frame after the previous one got its command')
    parser.add_argument('--role', default='ego_vehicle', help='CARLA role name')
    parser.add_argument('--camera-topic', help='default /carla/<role>/rgb_front/image')
    parser.add_argument('--control-topic', help='default /carla/<role>/vehicle_control_cmd')
    parser.add_argument('--consume-timeout', type=float, default=2.0,
                        help='seconds to wait for a command before re-sending a frame')
    parser.add_argument('--retries', type=int, default=3,
                        help='re-sends of an unanswered frame before giving up on it')
    parser.add_argument('--wait-for', nargs='*', metavar='TOPIC',
                        help='wait until these topics have subscribers (default with '
                             '--as-fast-as-consumed: camera, odometry, waypoints, episode '
                             'start, where the bag has them)')
    parser.add_argument('--wait-timeout', type=float, default=30.0)
    parser.add_argument('--delay', type=float,
                        help='seconds to wait after the subscribers appeared (default 0.5 '
                             'with --as-fast-as-consumed, else 0)')
    parser.add_argument('--sync-node', default=SYNC_AUTO,
                        help='as-fast-as-consumed: the consumer node (/ns/name) whose '
                        'parameter service confirms it handled the messages before a frame '
                        '(default auto: the node subscribed to the camera topic, e.g. '
                        '/ego_vehicle/driver from the launch files or /driver from ros2 run; '
                        '"" to use --settle)')
    parser.add_argument('--drain-timeout', type=float, default=10.0,
                        help='seconds to wait at the end for reliable subscribers to '
                             'acknowledge the last messages (default 10)')
    parser.add_argument('--settle', type=float, default=0.01,
                        help='as-fast-as-consumed without a sync node: seconds between the '
                             'messages preceding a frame and the frame (default 0.01)')
    args = parser.parse_args(argv)
    if args.rate <= 0.0:
        parser.error('--rate must be > 0')
    base = f'/carla/{args.role}'
    camera = args.camera_topic or f'{base}/rgb_front/image'
    if args.wait_for is not None:
        wait_for = tuple(args.wait_for)
    elif args.as_fast_as_consumed:
        wait_for = (camera, f'{base}/odometry', f'{base}/waypoints',
                    f'/av_td3/{args.role}/episode_start')
    else:
        wait_for = ()
    return ReplayConfig(
        bag=args.bag, rate=args.rate, topics=tuple(args.topics), exclude=tuple(args.exclude),
        clock=args.clock,
        latched=tuple(args.latched if args.latched is not None
                      else default_latched(args.role)),
        as_fast_as_consumed=args.as_fast_as_consumed, camera_topic=camera,
        control_topic=args.control_topic or f'{base}/vehicle_control_cmd',
        consume_timeout=args.consume_timeout, retries=args.retries, wait_for=wait_for,
        wait_timeout=args.wait_timeout, settle=args.settle, drain_timeout=args.drain_timeout,
        delay=args.delay if args.delay is not None else (
            0.5 if args.as_fast_as_consumed else 0.0),
        refresh=(f'{base}/odometry',),
        sync_node=args.sync_node if args.as_fast_as_consumed else '')


def main(args=None):
    """Run the player from the command line; exit 1 if frames went unanswered."""
    argv = sys.argv if args is None else args
    config = parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    stats = None
    try:
        stats = replay(config)
        print(f'published {stats.published} messages; frames {stats.frames}, answered '
              f'{stats.answered}, re-sent {stats.resent}, unanswered '
              f'{len(stats.unanswered)}, topics not acknowledged '
              f'{len(stats.unacknowledged)}', flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (TimeoutError, UnknownTypeError, SyncNodeError) as error:
        print(f'bag_replay: {error}', file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        rclpy.try_shutdown()
    if stats is not None and stats.unanswered:
        sys.exit(1)


if __name__ == '__main__':
    main()
