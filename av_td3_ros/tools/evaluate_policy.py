"""Drive stand-in episodes with a policy checkpoint (or the expert) and report the returns.

    evaluate_policy --checkpoint models/camera_policy.safetensors --seeds 7000-7009
    evaluate_policy --checkpoint models/camera_policy.safetensors --seeds 7000-7004 \
        --ablate camera
    evaluate_policy --expert --seeds 7000-7009
    evaluate_policy --checkpoint models/camera_policy.safetensors --seeds 7000-7009 --through-ros
    evaluate_policy --expert --seeds 7000-7009 --through-ros --route-spacing 1.0 \
        --driver-route-spacing 3.5
    evaluate_policy --world metadrive --expert --seeds 33000-33009 --traffic-density 0.1
    evaluate_policy --world metadrive --checkpoint policy.safetensors --seeds 33000-33009 \
        --camera 84x84 --through-ros

In-process (default) the episodes run on `SimEnv` through the driver's own pipeline. With
`--through-ros` the sim_bridge and driver nodes of launch/sim_drive.launch.xml run as
processes and the returns come from the bridge's episode_end messages, each matched to its
episode by stamp. The bridge's episode e drives track seed + e; episode 0 is a warm-up.

`--world metadrive` runs MetaDrive scenarios in-process (sim/metadrive_evaluation.py): the
privileged expert (`--expert`) or a checkpoint through the driver's pipeline; with
`--through-ros` a checkpoint drives the metadrive_bridge and driver nodes of
launch/metadrive_drive.launch.xml, whose warm-up episode is cut short by reset_episode.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from av_td3_ros.sim.evaluation import EpisodeResult, parse_seeds, summary_line
from av_td3_ros.task.episode_end import parse_episode_end

ABLATION_SEED = 99  # the track whose expert-driven states give an ablation's means


def episode_seeds(seeds: list[int], episodes: int | None) -> list[int]:
    """Return `episodes` seeds: the first of `seeds`, continued consecutively if too few."""
    if episodes is None:
        return seeds
    if episodes < 1:
        raise ValueError('--episodes must be >= 1')
    chosen = seeds[:episodes]
    while len(chosen) < episodes:
        chosen.append(chosen[-1] + 1)
    return chosen


def ablated(policy, spec, ablate: str):
    """Return `policy` with the `ablate` input replaced by its mean over expert-driven states."""
    from av_td3_ros.sim.evaluation import AblatedPolicy, input_means, reference_states
    frames, vectors = reference_states(spec, ABLATION_SEED)
    features, kinematics = input_means(policy, frames, vectors)
    return AblatedPolicy(policy, ablate, features if ablate == 'camera' else kinematics)


def evaluate_in_process(args, seeds: list[int], report) -> list[EpisodeResult]:
    """Run the episodes in-process; call `report(result)` after each."""
    import torch

    from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
    from av_td3_ros.sim.evaluation import evaluate_expert, evaluate_policy
    from av_td3_ros.sim.sim_env import SimEnvConfig
    sim = SimEnvConfig(max_episode_steps=args.max_steps, route_spacing=args.route_spacing,
                       render_camera=not args.expert)
    if args.expert:
        return evaluate_expert(seeds, env_config=sim, on_episode=report,
                               route_spacing=args.driver_route_spacing)
    policy, metadata = load_policy(args.checkpoint)
    spec = PolicySpec.from_metadata(metadata)
    if args.ablate:
        policy = ablated(policy, spec, args.ablate)
    with torch.inference_mode():
        return evaluate_policy(policy, spec, seeds, sim, report, args.driver_route_spacing)


def ros_episode_result(seed: int, text: str) -> EpisodeResult:
    """Turn a sim_bridge episode_end text into an EpisodeResult."""
    end = parse_episode_end(text)
    if end.episode_return is None or end.steps is None:
        raise ValueError(f'episode_end {text!r} has no return or steps')
    return EpisodeResult(seed, end.episode_return, end.steps, end.reason, -1)


def episode_of(end_text: str, starts: list[tuple[int, int]]) -> int | None:
    """Return the index of the episode an episode_end belongs to, or None if not yet known.

    `starts` holds (stamp_ns, index) of the episode_starts seen: the end belongs to the newest
    start not after it; -1 if it came before every start (a warm-up whose start was missed).
    """
    stamp = parse_episode_end(end_text).stamp_ns
    if stamp is None:
        return None
    earlier = [(start, index) for start, index in starts if start <= stamp]
    if earlier:
        return max(earlier)[1]
    return -1 if any(start > stamp for start, _ in starts) else None


ROLE = 'ego_vehicle'  # the role the launch files serve by default
RESTART_AFTER_COMMANDS = 3
"""Commands heard from the driver before a warm-up episode is cut short: it is up and
answering frames (it loads its policy before it subscribes)."""


def consecutive_from_one(seeds: list[int]) -> None:
    """Raise ValueError unless `seeds` run consecutively from 1 or more."""
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))) or seeds[0] < 1:
        raise ValueError('--through-ros runs consecutive seeds from 1 up (the bridge plays '
                         'seed + episode after a warm-up on the seed before the first): give '
                         'a range such as 7000-7009')


def shipped_params(config: Path, node: str) -> dict:
    """Return config/<node>.yaml as loaded (one section with its ros__parameters)."""
    import yaml
    return yaml.safe_load((config / f'{node}.yaml').read_text())


def yaml_param(config: Path, node: str, name: str):
    """Return one parameter's value in config/<node>.yaml."""
    (section,) = shipped_params(config, node).values()
    return section['ros__parameters'][name]


def params_file(config: Path, node: str, overrides: dict, workdir: str) -> str:
    """Write config/<node>.yaml with `overrides` into `workdir`; return the new file's path."""
    import yaml
    params = shipped_params(config, node)
    (section,) = params.values()
    section['ros__parameters'].update(overrides)
    path = Path(workdir, f'{node}.yaml')
    path.write_text(yaml.safe_dump(params))
    return str(path)


def run_ros_episodes(args, launch_name: str, arguments: dict, bridge: str, count: int,
                     on_end, restart: bool = False) -> int:
    """Run a launch file's bridge and driver; call `on_end(text)` for episodes 1 to `count`.

    `arguments(workdir)` gives the launch arguments. Episode 0 is a warm-up: driven to its
    end, or with `restart` cut short by reset_episode once the driver answers. Return the
    number of episodes passed to `on_end`.
    """
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    from av_td3_ros.tools.launch_runner import LaunchedNode, parse_launch_file, resolve_launch_path
    launch_file = resolve_launch_path(launch_name)
    with tempfile.TemporaryDirectory(prefix='av_td3_eval_') as workdir:
        description = parse_launch_file(
            launch_file, arguments(launch_file.parent.parent / 'config', workdir))
        env = dict(os.environ, **description.environment, PYTHONUNBUFFERED='1')
        os.environ.update(description.environment)
        import rclpy
        from carla_msgs.msg import CarlaEgoVehicleControl
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Header, String
        from std_srvs.srv import Trigger
        ends, starts, commands = [], [], []  # starts: (stamp_ns, episode index)
        rclpy.init(args=[])
        node = Node('evaluate_policy')
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        end_sub = node.create_subscription(String, f'/av_td3/{ROLE}/episode_end',
                                           lambda msg: ends.append(msg.data), reliable)
        start_sub = node.create_subscription(
            Header, f'/av_td3/{ROLE}/episode_start',
            lambda msg: starts.append((msg.stamp.sec * 10**9 + msg.stamp.nanosec,
                                       int(msg.frame_id))), reliable)
        if restart:
            node.create_subscription(CarlaEgoVehicleControl,
                                     f'/carla/{ROLE}/vehicle_control_cmd', commands.append,
                                     reliable)
            reset = node.create_client(Trigger, f'/av_td3/{ROLE}/reset_episode')
        nodes, done = [], 0
        deadline = time.monotonic() + args.timeout

        def running() -> bool:
            """Return False past the deadline or once a node exited."""
            return time.monotonic() < deadline and all(
                launched.process.poll() is None for launched in nodes)

        def spin_until(condition) -> bool:
            """Spin until `condition()`; False when no longer running()."""
            while not condition():
                if not running():
                    return False
                rclpy.spin_once(node, timeout_sec=0.1)
            return True

        try:
            # The driver only once this node hears the bridge's episode topics: the world
            # waits for the driver, so no episode after the warm-up starts or ends unheard.
            for node_spec in sorted(description.nodes, key=lambda n: n.name != bridge):
                if node_spec.name != bridge:
                    spin_until(lambda: min(end_sub.get_publisher_count(),
                                           start_sub.get_publisher_count()) >= 1)
                nodes.append(LaunchedNode(node_spec, env, Path(workdir), echo=args.verbose))
            if restart and spin_until(lambda: len(commands) >= RESTART_AFTER_COMMANDS):
                future = reset.call_async(Trigger.Request())
                if spin_until(future.done) and not future.result().message.startswith(
                        'episode=1;'):
                    raise OSError('the warm-up episode ended before the driver answered '
                                  f'(reset_episode: {future.result().message})')
            while done < count and running():
                rclpy.spin_once(node, timeout_sec=0.2)
                while ends and done < count:
                    index = episode_of(ends[0], starts)
                    if index is None:
                        break  # its episode_start is still on its way
                    text = ends.pop(0)
                    if index < 1:
                        continue  # the warm-up episode
                    if index != done + 1:
                        raise OSError(f'episode {done + 1} ended unseen (got {index})')
                    done += 1
                    on_end(text)
            if done < count and time.monotonic() < deadline:
                print('[evaluate_policy] a node exited early', flush=True)
        finally:
            for launched in reversed(nodes):
                launched.stop()
            node.destroy_node()
            rclpy.try_shutdown()
    if done < count:
        print(f'[evaluate_policy] only {done} of {count} episodes finished', flush=True)
    return done


def evaluate_through_ros(args, seeds: list[int], report) -> list[EpisodeResult]:
    """Run sim_bridge + driver as processes for consecutive seeds; collect episode_end."""
    from av_td3_ros.policy.checkpoint import PolicySpec, read_metadata
    consecutive_from_one(seeds)
    if args.expert:  # the driver node drives with its route expert (mode:=expert)
        launch_args = {'mode': 'expert', 'checkpoint': ''}
    else:
        spec = PolicySpec.from_metadata(read_metadata(args.checkpoint))
        launch_args = {'checkpoint': str(Path(args.checkpoint).resolve()),
                       'feature_norm': spec.network.feature_norm}

    def arguments(config: Path, workdir: str) -> dict:
        # Lock-step: a driver slowed by a busy machine must not let the world tick without its
        # command (that would change the returns): the bridge's step timeout only re-kicks a
        # lost frame, and likewise the driver's stall watchdog brake must not tick it.
        bridge = params_file(config, 'sim_bridge', {
            'max_episode_steps': args.max_steps, 'step_timeout': 10.0,
            'route_spacing': args.route_spacing}, workdir)
        driver = params_file(config, 'driver', {
            'frame_timeout': 5.0, 'backend': args.backend,
            'route_spacing': args.driver_route_spacing}, workdir)
        return dict(launch_args, seed=str(seeds[0] - 1), device='cpu',
                    sim_params_file=bridge, driver_params_file=driver)

    results = []

    def on_end(text: str):
        results.append(ros_episode_result(seeds[len(results)], text))
        report(results[-1])

    run_ros_episodes(args, 'sim_drive.launch.xml', arguments, 'sim_bridge', len(seeds), on_end)
    return results


def evaluate_metadrive_through_ros(args, seeds: list[int]) -> list:
    """Run metadrive_bridge + driver as processes for consecutive seeds, printing each end."""
    from av_td3_ros.policy.checkpoint import PolicySpec, read_metadata
    from av_td3_ros.sim.metadrive_results import result_from_episode_end
    consecutive_from_one(seeds)
    spec = PolicySpec.from_metadata(read_metadata(args.checkpoint))
    width, height = camera_size(args.camera)

    def arguments(config: Path, workdir: str) -> dict:
        # Lock-step, as for CarRacing; the warm-up episode plays the seed before the first.
        # A MetaDrive reset can outlast 5 s on a busy CPU, and a stall brake stamped with the
        # next episode's first frame would tick it before the policy's answer: the driver's
        # watchdog waits as long as the bridge lets a reset take (worker_timeout).
        bridge = params_file(config, 'metadrive_bridge', {
            'traffic_density': args.traffic_density, 'map': args.map, 'step_timeout': 10.0,
            'scenarios': len(seeds) + 1}, workdir)
        timeout = yaml_param(config, 'metadrive_bridge', 'worker_timeout')
        driver = params_file(config, 'driver', {'frame_timeout': timeout,
                                                'backend': args.backend}, workdir)
        return {'checkpoint': str(Path(args.checkpoint).resolve()),
                'feature_norm': spec.network.feature_norm, 'device': 'cpu',
                'seed': str(seeds[0] - 1), 'image_width': str(width),
                'image_height': str(height), 'max_episode_steps': str(args.max_steps),
                'bridge_params_file': bridge, 'driver_params_file': driver}

    results = []

    def on_end(text: str):
        results.append(result_from_episode_end(seeds[len(results)], text))
        print(results[-1].line(), flush=True)

    # A whole warm-up episode in MetaDrive costs minutes: it is cut short instead.
    run_ros_episodes(args, 'metadrive_drive.launch.xml', arguments, 'metadrive_bridge',
                     len(seeds), on_end, restart=True)
    return results


def camera_size(camera: str) -> tuple[int, int]:
    """Return (width, height) of a WIDTHxHEIGHT text; raise ValueError otherwise."""
    try:
        width, height = (int(v) for v in camera.lower().split('x'))
    except ValueError:
        raise ValueError(f'--camera {camera!r}: give WIDTHxHEIGHT') from None
    return width, height


def evaluate_metadrive(args, seeds: list[int]) -> list:
    """Run MetaDrive episodes in-process (expert or checkpoint), printing a line after each."""
    from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveConfig
    from av_td3_ros.sim.metadrive_evaluation import evaluate, policy_driver
    width, height = camera_size(args.camera)
    config = MetaDriveConfig(image_width=width, image_height=height,
                             traffic_density=args.traffic_density, map=args.map,
                             max_episode_steps=args.max_steps, expert=args.expert,
                             # MetaDrive builds only the scenarios in this window of seeds.
                             start_seed=min(seeds), scenarios=max(seeds) - min(seeds) + 1)
    import torch
    drive = None
    if not args.expert:
        from av_td3_ros.driving.pipeline import DrivingPipeline
        from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
        from av_td3_ros.policy.inference import PolicyRunner
        policy, metadata = load_policy(args.checkpoint)
        spec = PolicySpec.from_metadata(metadata)
        runner = PolicyRunner(policy, torch.device('cpu'))
        drive = policy_driver(DrivingPipeline(spec, runner),
                              blank_camera=args.ablate == 'camera')
    client = MetaDriveClient(config)
    try:
        with torch.inference_mode():
            return evaluate(client, seeds, drive,
                            lambda result: print(result.line(), flush=True))
    finally:
        client.close()


def main(argv=None) -> int:
    """Evaluate and print one line per episode and the mean; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', help='policy .safetensors file')
    parser.add_argument('--expert', action='store_true', help='drive the route expert')
    parser.add_argument('--seeds', default='0-4', help="track seeds: '7000-7009' or '1,5,9'")
    parser.add_argument('--episodes', type=int,
                        help='number of episodes: the first seeds, continued consecutively')
    parser.add_argument('--ablate', choices=('camera', 'kinematics'),
                        help='replace that input with its mean over expert-driven states')
    parser.add_argument('--max-steps', type=int, default=1000,
                        help='time limit of an episode in steps (the sim_bridge default)')
    parser.add_argument('--route-spacing', type=float, default=0.0,
                        help='the simulator publishes its route every this many metres, as '
                             "another planner would (CARLA's: 1); 0: its own ~3.5 m")
    parser.add_argument('--driver-route-spacing', type=float, default=0.0,
                        help="the driver's route_spacing: it resamples each route it "
                             'receives every this many metres; 0: as received')
    parser.add_argument('--backend', default='torch', choices=('torch', 'auto', 'onnxruntime'),
                        help="--through-ros: the driver's inference backend; torch (exact) "
                             'gives the in-process returns episode for episode')
    parser.add_argument('--through-ros', action='store_true',
                        help='run the bridge (sim_bridge or metadrive_bridge) and driver '
                             'nodes instead of in-process')
    parser.add_argument('--timeout', type=float, default=3600.0,
                        help='--through-ros: give up after this many seconds')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--verbose', action='store_true', help='echo the nodes\' output')
    parser.add_argument('--world', choices=('carracing', 'metadrive'), default='carracing',
                        help='the CarRacing stand-in, or MetaDrive')
    parser.add_argument('--traffic-density', type=float, default=0.1,
                        help='metadrive: traffic density')
    parser.add_argument('--map', default='3',
                        help="metadrive: a number of blocks ('3') or a block string ('SCrRX')")
    parser.add_argument('--camera', default='256x144',
                        help='metadrive: camera WIDTHxHEIGHT (the bridge default)')
    args = parser.parse_args(argv)
    if args.world == 'metadrive':
        return main_metadrive(parser, args)
    if not args.expert and not args.checkpoint:
        parser.error('give --checkpoint or --expert')
    if args.ablate and (args.expert or args.through_ros):
        parser.error('--ablate works on a checkpoint, in-process')
    try:
        seeds = episode_seeds(parse_seeds(args.seeds), args.episodes)
    except ValueError as error:
        parser.error(str(error))
    import torch
    torch.set_num_threads(args.threads)

    def report(result: EpisodeResult):
        print(result.line(), flush=True)

    try:
        run = evaluate_through_ros if args.through_ros else evaluate_in_process
        results = run(args, seeds, report)
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f'evaluate_policy: {error}', file=sys.stderr)
        return 2
    print(summary_line(results), flush=True)
    return 0 if len(results) == len(seeds) else 1


def main_metadrive(parser, args) -> int:
    """Check the MetaDrive arguments, evaluate and print the summary; return the exit status."""
    from av_td3_ros.sim.metadrive_results import summary_line as metadrive_summary
    if not args.expert and not args.checkpoint:
        parser.error('give --checkpoint or --expert')
    if args.through_ros and (args.expert or args.ablate):
        parser.error("--world metadrive --through-ros drives a checkpoint, unablated (the "
                     "driver node has no MetaDrive expert and no blank camera)")
    if args.ablate and (args.expert or args.ablate != 'camera'):
        parser.error('--world metadrive: --ablate camera works on a checkpoint (it blanks '
                     'the image)')
    try:
        seeds = episode_seeds(parse_seeds(args.seeds), args.episodes)
        camera_size(args.camera)
    except ValueError as error:
        parser.error(str(error))
    import torch
    torch.set_num_threads(args.threads)
    try:
        run = evaluate_metadrive_through_ros if args.through_ros else evaluate_metadrive
        results = run(args, seeds)
    except (ValueError, OSError, RuntimeError) as error:  # SimulatorFault is a RuntimeError
        print(f'evaluate_policy: {error}', file=sys.stderr)
        return 2
    print(metadrive_summary(results), flush=True)
    return 0 if len(results) == len(seeds) else 1


if __name__ == '__main__':
    sys.exit(main())
