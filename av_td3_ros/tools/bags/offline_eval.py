"""Run the driver's exact per-frame pipeline over a bag, without DDS, and write its commands.

    bag_eval BAG -o OUT [--storage mcap|sqlite3] [--checkpoint F | --allow-random-policy true]
             [--seed N] [--frame-scale unit] [--params-file driver.yaml] [-p name:=value]
             [--copy-inputs] [--debug-topic T] [--no-odometry-timeout]

Every driver parameter is an option, checked and turned into the driver's config by its own
schema (`driver_config.DRIVER`, no rclpy). Each camera frame is decided by the driver's own
`DriverInputs` with what came before it in bag order (the newest odometry not newer than the
frame, the newest route; episode_start resets the frame stack). The output bag holds one
command per frame, stamped with the frame's stamp at its bag time, and the debug frame stack.

Differences from the live node, as there is no wall clock: odometry_timeout is measured in
bag time (--no-odometry-timeout disables it); no camera watchdog commands; a checkpoint
directory is resolved once (no policy is swapped in during a bag). On one machine and
checkpoint the output is bit-for-bit reproducible.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import Reader, Writer

from av_td3_ros.driving.decision import DriverInputs
from av_td3_ros.driving.ros_conversions import fill_control_msg
from av_td3_ros.nodes.schema import ParameterError, load_params_file  # noqa: F401 (tests)
from av_td3_ros.tools.bags import STORAGES
from av_td3_ros.tools.bags.types import typestore
from av_td3_ros.tools.param_args import add_param_options, param_values

CONTROL_TYPE = 'carla_msgs/msg/CarlaEgoVehicleControl'
IMAGE_TYPE = 'sensor_msgs/msg/Image'


def driver_config(values: dict | None = None):
    """Return the driver's DriverConfig for `values`, which count as set by the user."""
    from av_td3_ros.nodes.driver_config import DRIVER, config_from_values
    values = dict(values or {})
    return config_from_values(DRIVER.read(values), set(values))


def driver_parameters() -> dict:
    """Return {name: (default, description)} of every driver parameter."""
    from av_td3_ros.nodes.driver_config import DRIVER
    defaults = DRIVER.defaults()
    return {param.name: (defaults[param.name], param.description) for param in DRIVER}


def make_runner(config):
    """Build the runner the driver would start with (None: the driver brakes).

    Raise FileNotFoundError without a checkpoint file, and the driver's refusal for a file it
    would not drive with.
    """
    import torch

    from av_td3_ros.driving.hot_reload import PolicyReloader, Poll, random_policy
    from av_td3_ros.policy.inference import resolve_device
    from av_td3_ros.policy.inference_onnx import build_runner
    torch.set_num_threads(config.torch_threads)
    try:
        device = resolve_device(config.device)
    except ValueError:
        device = resolve_device('cpu')  # as the driver: fall back to CPU

    def runner_for(policy):
        return build_runner(policy, device, config.backend, config.allow_tf32)[0]

    if config.checkpoint:
        reloader = PolicyReloader(config.spec, runner_for, config.checkpoint)
        if reloader.poll(block=True) is Poll.MISSING:
            raise FileNotFoundError(f'no policy checkpoint in {config.checkpoint}')
        if reloader.failure is not None:
            raise reloader.failure.error
        return reloader.take().runner
    if config.allow_random_policy:
        return runner_for(random_policy(config.spec, config.seed))
    return None


@dataclass
class EvalResult:
    """What an offline evaluation decided."""

    frames: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Frames per reason, as the driver's /diagnostics say it ('policy', 'no route', ...)."""
    episodes: int = 0
    missing_topics: list[str] = field(default_factory=list)
    """Inputs the driver needs that the bag does not have (its frames then all brake)."""


def missing_inputs(config, topics: set[str]) -> list[str]:
    """Return the driver inputs absent from a bag's `topics`, each with what it causes."""
    needed = [(config.camera_topic, 'no frames to decide'),
              (config.odometry_topic, "every frame brakes: 'no recent odometry'")]
    if config.require_route:
        needed.append((config.route_topic, "every frame brakes: 'no route' "
                       '(or pass --require-route false)'))
    return [f'{topic} ({effect})' for topic, effect in needed if topic not in topics]


def evaluate_bag(bag: Path, output: Path | None, config, runner=None, storage: str = 'mcap',
                 debug_topic: str | None = None, copy_inputs: bool = False,
                 odometry_timeout: bool = True) -> EvalResult:
    """Decide every camera frame of `bag` as the driver would; write `output` if given."""
    from av_td3_ros.driving.pipeline import DrivingPipeline
    store = typestore()
    # The driver node's own decision logic, with bag time (s) for its clock.
    driver = DriverInputs(DrivingPipeline(config.spec, runner, config.exploration, config.expert),
                          config.odometry_timeout if odometry_timeout else None,
                          config.require_route, route_spacing=config.route_spacing)
    result = EvalResult()
    role = config.role_name
    if debug_topic is None:
        debug_topic = f'/{role}/driver/debug/frame_stack'
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    Control = store.types[CONTROL_TYPE]
    Image = store.types[IMAGE_TYPE]
    writer = None
    if output is not None:
        writer = Writer(output, version=9, storage_plugin=STORAGES[storage])
        writer.open()
    try:
        with Reader(bag) as reader:
            result.missing_topics = missing_inputs(config, {c.topic for c in reader.connections})
            copies = {}
            if writer is not None:
                control_conn = writer.add_connection(config.control_topic, CONTROL_TYPE,
                                                     typestore=store)
                debug_conn = (writer.add_connection(debug_topic, IMAGE_TYPE, typestore=store)
                              if config.publish_debug else None)
                if copy_inputs:
                    for conn in reader.connections:
                        if conn.topic in (config.control_topic, debug_topic):
                            continue  # replaced by this evaluation's output
                        copies[conn.id] = writer.add_connection(
                            conn.topic, conn.msgtype, msgdef=conn.msgdef.data,
                            rihs01=conn.digest, offered_qos_profiles=getattr(
                                conn.ext, 'offered_qos_profiles', ()))
            for conn, t_ns, raw in reader.messages():
                if conn.id in copies:
                    writer.write(copies[conn.id], t_ns, raw)
                topic = conn.topic
                if topic == config.odometry_topic:
                    driver.on_odometry(store.deserialize_cdr(raw, conn.msgtype), t_ns * 1e-9)
                elif topic == config.route_topic:
                    driver.on_route(store.deserialize_cdr(raw, conn.msgtype))
                elif topic == config.episode_start_topic:
                    driver.pipeline.reset_episode()
                    result.episodes += 1
                elif topic == config.camera_topic:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    decision = driver.decide(msg, t_ns * 1e-9)
                    result.frames += 1
                    result.reasons[decision.text] = result.reasons.get(decision.text, 0) + 1
                    stamp, step = msg.header.stamp, decision.step
                    if writer is None:
                        continue
                    control = Control(header=Header(stamp=Time(sec=stamp.sec,
                                                               nanosec=stamp.nanosec),
                                                    frame_id=''),
                                      throttle=0.0, steer=0.0, brake=0.0, hand_brake=False,
                                      reverse=False, gear=0, manual_gear_shift=False)
                    fill_control_msg(control, decision.command, control.header.stamp, role)
                    writer.write(control_conn, t_ns, store.serialize_cdr(control, CONTROL_TYPE))
                    if debug_conn is not None and step is not None:
                        pixels = driver.debug_image()
                        image = Image(header=msg.header, height=pixels.shape[0],
                                      width=pixels.shape[1], encoding='mono8', is_bigendian=0,
                                      step=pixels.shape[1], data=pixels.reshape(-1).copy())
                        writer.write(debug_conn, t_ns, store.serialize_cdr(image, IMAGE_TYPE))
    finally:
        if writer is not None:
            writer.close()
    return result


def build_parser(parameters: dict) -> argparse.ArgumentParser:
    """Return the CLI parser: the tool's options plus one option per driver parameter."""
    parser = argparse.ArgumentParser(prog='bag_eval', description=__doc__.split('\n')[0])
    parser.add_argument('bag', type=Path, help='input bag directory')
    parser.add_argument('-o', '--output', type=Path, help='output bag directory to create')
    parser.add_argument('-s', '--storage', choices=sorted(STORAGES), default='mcap')
    parser.add_argument('--debug-topic', help='debug image topic in the output bag '
                        '(default /<role>/driver/debug/frame_stack, the launch file\'s name)')
    parser.add_argument('--copy-inputs', action='store_true',
                        help='copy every input message into the output bag as well')
    parser.add_argument('--no-odometry-timeout', action='store_true',
                        help='ignore odometry_timeout (it is measured in bag time)')
    add_param_options(parser, 'driver', 'config/driver.yaml',
                      'driver parameters (as the driver node\'s)', parameters)
    return parser


def main(args=None):
    """Run the offline evaluation from the command line."""
    argv = sys.argv[1:] if args is None else list(args)[1:]
    parameters = driver_parameters()
    parsed = build_parser(parameters).parse_args(argv)
    try:
        config = driver_config(param_values(parsed, 'driver', parameters))
        runner = make_runner(config)
    except (ParameterError, ValueError, FileNotFoundError) as error:
        sys.exit(f'bag_eval: {error}')
    if runner is None:
        print('bag_eval: no checkpoint and allow_random_policy false: every command is a '
              'full brake, as the driver would do', file=sys.stderr)
    if parsed.output is not None and parsed.output.exists():
        sys.exit(f'bag_eval: {parsed.output} exists already')
    result = evaluate_bag(parsed.bag, parsed.output, config, runner, parsed.storage,
                          parsed.debug_topic, parsed.copy_inputs,
                          not parsed.no_odometry_timeout)
    for missing in result.missing_topics:
        print(f'bag_eval: the bag has no {missing}; a bag needs the camera, odometry and '
              'route topics (docs/bags.md)', file=sys.stderr)
    reasons = ', '.join(f'{k}: {v}' for k, v in sorted(result.reasons.items()))
    print(f'{result.frames} frames, {result.episodes} episode starts; {reasons}'
          + (f'; wrote {parsed.output}' if parsed.output else ''), flush=True)


if __name__ == '__main__':
    main()
