"""Run the driver's exact per-frame pipeline over a bag, without DDS, and write its commands.

    bag_eval BAG -o OUT [--storage mcap|sqlite3] [--checkpoint F | --allow-random-policy true]
             [--seed N] [--frame-scale unit] [--params-file driver.yaml] [-p name:=value]
             [--copy-inputs] [--debug-topic T] [--no-odometry-timeout]

Every driver parameter is an option (`--frame-scale unit` is `-p frame_scale:=unit`): they are
checked against the driver's own parameter schema (`driver_config.DRIVER`, no rclpy) and
turned into its config by the driver's own `config_from_values`, so names, defaults, ranges
and the resulting PolicySpec (taken from the checkpoint where not given) are the driver's.
Each camera frame is decided by the driver's own `DriverInputs` (driving/decision.py) with what
was recorded before it in bag order: the newest odometry not newer than the frame's stamp,
and the newest route; episode_start messages
reset the frame stack. The output bag holds one CarlaEgoVehicleControl per frame on the
driver's control topic, stamped with the frame's stamp and written at the frame's bag time,
plus the debug frame-stack image (mono8) the driver would publish for it.

Differences from the live node, all because there is no wall clock offline:
- odometry_timeout is measured in bag time (frame receive time minus odometry receive
  time), not wall time; --no-odometry-timeout disables it;
- no camera watchdog (frame_timeout) commands: exactly one command per frame;
- a checkpoint directory is resolved once (its newest policy), with the driver's own
  loader (driving/hot_reload.py: same spec check, same refusals); no policy is swapped in
  during a bag, so the output does not depend on when a trainer wrote a file.
On one machine and checkpoint the output is bit-for-bit reproducible (CPU, same
torch_threads as the driver).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, Writer

from av_td3_ros.driving.decision import DriverInputs, Reason
from av_td3_ros.driving.ros_conversions import (
    fill_control_msg,
    stamp_to_ns,
)
from av_td3_ros.nodes.schema import ParameterError, load_params_file
from av_td3_ros.policy.control import ControlCommand
from av_td3_ros.tools.bags import STORAGES
from av_td3_ros.tools.bags.types import typestore

CONTROL_TYPE = 'carla_msgs/msg/CarlaEgoVehicleControl'
IMAGE_TYPE = 'sensor_msgs/msg/Image'


def driver_config(values: dict | None = None):
    """Return the driver's DriverConfig for parameter `values` (checked against its schema).

    The values given count as set by the user, as a params file or -p does for the node.
    """
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

    Raise FileNotFoundError without a checkpoint file, and the driver's refusal (e.g. a
    CheckpointError for another PolicySpec) for a file it would not drive with.
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
class FrameDecision:
    """The command the driver would publish for one frame, and why."""

    t_ns: int
    stamp_ns: int
    command: ControlCommand
    reason: Reason
    text: str
    """The reason as the driver's log and /diagnostics say it ('bad route: <why>')."""
    action: np.ndarray | None = None


@dataclass
class EvalResult:
    """Everything an offline evaluation decided."""

    decisions: list[FrameDecision] = field(default_factory=list)
    episodes: int = 0
    missing_topics: list[str] = field(default_factory=list)
    """Inputs the driver needs that the bag does not have (its frames then all brake)."""

    def reasons(self) -> dict[str, int]:
        """Count frames per reason text ('policy', 'no route', ...)."""
        counts = {}
        for decision in self.decisions:
            counts[decision.text] = counts.get(decision.text, 0) + 1
        return counts


def offline_driver(config, runner=None, odometry_timeout: bool = True) -> DriverInputs:
    """Build the driver's per-frame decision logic for the DriverConfig `config`.

    The same `DriverInputs` the driver node uses; time is bag time in seconds.
    """
    from av_td3_ros.driving.pipeline import DrivingPipeline
    pipeline = DrivingPipeline(config.spec, runner, config.exploration)
    return DriverInputs(pipeline, config.odometry_timeout if odometry_timeout else None,
                        config.require_route)


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
    store = typestore()
    driver = offline_driver(config, runner, odometry_timeout)
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
                    command, step = decision.command, decision.step
                    stamp = msg.header.stamp
                    result.decisions.append(FrameDecision(
                        t_ns, stamp_to_ns(stamp), command, decision.reason, decision.text,
                        None if step is None else step.action))
                    if writer is None:
                        continue
                    control = Control(header=Header(stamp=Time(sec=stamp.sec,
                                                               nanosec=stamp.nanosec),
                                                    frame_id=''),
                                      throttle=0.0, steer=0.0, brake=0.0, hand_brake=False,
                                      reverse=False, gear=0, manual_gear_shift=False)
                    fill_control_msg(control, command, control.header.stamp, role)
                    writer.write(control_conn, t_ns, store.serialize_cdr(control, CONTROL_TYPE))
                    if debug_conn is not None and step is not None:
                        pixels = driver.debug_image()
                        image = Image(header=msg.header, height=pixels.shape[0],
                                      width=pixels.shape[1], encoding='mono8', is_bigendian=0,
                                      step=pixels.shape[1], data=pixels.reshape(-1).copy())
                        writer.write(debug_conn, t_ns, store.serialize_cdr(image, IMAGE_TYPE))
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    if writer is not None:
        writer.close()
    return result


def _parse_value(text: str):
    """Parse a parameter value the way `-p name:=value` does (YAML scalars)."""
    return yaml.safe_load(text) if text != '' else ''


def build_parser(parameters: dict) -> argparse.ArgumentParser:
    """Return the CLI parser: the tool's options plus one option per driver parameter."""
    parser = argparse.ArgumentParser(prog='bag_eval', description=__doc__.split('\n')[0])
    parser.add_argument('bag', type=Path, help='input bag directory')
    parser.add_argument('-o', '--output', type=Path, help='output bag directory to create')
    parser.add_argument('-s', '--storage', choices=sorted(STORAGES), default='mcap')
    parser.add_argument('--params-file', type=Path,
                        help='driver parameters YAML (e.g. config/driver.yaml)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='set a driver parameter (repeatable)')
    parser.add_argument('--debug-topic', help='debug image topic in the output bag '
                        '(default /<role>/driver/debug/frame_stack, the launch file\'s name)')
    parser.add_argument('--copy-inputs', action='store_true',
                        help='copy every input message into the output bag as well')
    parser.add_argument('--no-odometry-timeout', action='store_true',
                        help='ignore odometry_timeout (it is measured in bag time)')
    group = parser.add_argument_group('driver parameters (as the driver node\'s)')
    for name, (default, description) in parameters.items():
        group.add_argument('--' + name.replace('_', '-'), dest='driver_' + name,
                           type=_parse_value, metavar=type(default).__name__.upper(),
                           help=f'{description} (default {default!r})')
    return parser


def main(args=None):
    """Run the offline evaluation from the command line."""
    argv = sys.argv[1:] if args is None else list(args)[1:]
    parameters = driver_parameters()
    parsed = build_parser(parameters).parse_args(argv)
    values = load_params_file(parsed.params_file, 'driver') if parsed.params_file else {}
    for item in parsed.param:
        name, sep, text = item.partition(':=')
        if not sep:
            sys.exit(f'bag_eval: -p expects NAME:=VALUE, got {item!r}')
        values[name] = _parse_value(text)
    for name in parameters:
        value = getattr(parsed, 'driver_' + name)
        if value is not None:
            values[name] = value
    values.pop('use_sim_time', None)  # a node-level parameter, not the driver's
    try:
        config = driver_config(values)
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
              'route topics (README, Bags)', file=sys.stderr)
    reasons = ', '.join(f'{k}: {v}' for k, v in sorted(result.reasons().items()))
    print(f'{len(result.decisions)} frames, {result.episodes} episode starts; {reasons}'
          + (f'; wrote {parsed.output}' if parsed.output else ''), flush=True)


if __name__ == '__main__':
    main()
