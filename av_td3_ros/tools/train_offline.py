"""Train a policy from recorded bags, without DDS: BC and/or TD3+BC through the trainer's Learner.

    train_offline --bag BAG [BAG ...] --out POLICY [--bc-updates N] [--td3-updates N]
                  [--batch-size N] [--role ROLE] [--seed N] [--tensorboard DIR]
                  [--run-dir DIR] [--params-file trainer.yaml] [-p name:=value]
                  [--activation ...] [--frame-scale ...] (the policy-spec parameters)

Each bag is read in bag order through the trainer node's `MessageFeed` into one
`TransitionAssembler` for `--role`; the transitions fill a replay buffer in `--run-dir` (a
temporary one by default). Then `--bc-updates` BC steps towards the route expert's actions and
`--td3-updates` TD3 updates (TD3+BC with bc_weight > 0); the policy goes to `--out`. Settings
are the trainer's parameters (its schema), from `--params-file`, `-p` and the spec options.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rosbags.rosbag2 import Reader

from av_td3_ros.learning.learner import Learner
from av_td3_ros.learning.message_feed import MessageFeed, input_topics
from av_td3_ros.nodes.schema import POLICY_SPEC, ParameterError
from av_td3_ros.nodes.trainer_config import TRAINER, TrainerConfig, config_from_values
from av_td3_ros.policy.checkpoint import save_policy_state
from av_td3_ros.task.transitions import TransitionAssembler
from av_td3_ros.tools.bags.types import typestore
from av_td3_ros.tools.param_args import add_param_options, param_values

SPEC_PARAMETERS = {param.name: (param.default, param.description) for param in POLICY_SPEC}


def count_frames(bags: list[Path], camera_topic: str) -> int:
    """Return the number of camera messages in `bags` (sizes the replay buffer)."""
    total = 0
    for bag in bags:
        with Reader(bag) as reader:
            total += sum(c.msgcount for c in reader.connections if c.topic == camera_topic)
    return total


def read_bag(bag: Path, config: TrainerConfig, role: str, store) -> dict[str, int]:
    """Feed one bag through a fresh assembler into `store(item)`; return what it saw."""
    assembler = TransitionAssembler(config.spec.features, config.reward, config.episode)
    messages = MessageFeed(assembler, config.spec.preprocessing.image_size, config.route_spacing)
    kinds = {topic: kind for kind, topic in
             input_topics(config.camera_topic, config.control_source, role).items()}
    types = typestore()
    seen = {kind: 0 for kind in kinds.values()} | {'bad_frames': 0}
    with Reader(bag) as reader:
        wanted = [c for c in reader.connections if c.topic in kinds]
        if not wanted:  # (rosbags reads every connection when given none)
            return seen
        for conn, _, raw in reader.messages(connections=wanted):
            kind = kinds[conn.topic]
            seen[kind] += 1
            problem = messages.feed(kind, types.deserialize_cdr(raw, conn.msgtype))
            if problem is not None and kind == 'camera':
                seen['bad_frames'] += 1  # dropped, as the trainer node does
            for item in assembler.pop_output():
                store(item)
    for item in assembler.finish():
        store(item)
    return seen


class Progress:
    """Print `label i/n` and the latest loss at most every `period` seconds, and at the end."""

    def __init__(self, label: str, total: int, period: float = 5.0):
        """Start timing `total` steps named `label`."""
        self.label, self.total, self.period = label, total, period
        self.start = self.last = time.monotonic()

    def update(self, done: int, loss: float | None):
        """Report step `done` (1-based) if a period has passed or it is the last."""
        now = time.monotonic()
        if now - self.last < self.period and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        text = '' if loss is None else f', loss {loss:.4f}'
        print(f'train_offline: {self.label} {done}/{self.total} ({rate:.1f} updates/s{text})',
              flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser: the tool's options plus one option per policy-spec parameter."""
    parser = argparse.ArgumentParser(prog='train_offline', description=__doc__.split('\n')[0])
    parser.add_argument('--bag', type=Path, nargs='+', required=True, action='extend',
                        help='input bag directories (repeatable)')
    parser.add_argument('--out', type=Path, required=True, help='policy checkpoint to write')
    parser.add_argument('--bc-updates', type=int, default=1000,
                        help="BC steps towards the route expert's actions (default 1000)")
    parser.add_argument('--td3-updates', type=int, default=0,
                        help='TD3 (TD3+BC with bc_weight > 0) updates after BC (default 0)')
    parser.add_argument('--batch-size', type=int, help='transitions per update (default: the '
                        "trainer's batch_size)")
    parser.add_argument('--role', default='ego_vehicle', help='vehicle role name in the bags')
    parser.add_argument('--seed', type=int, help="seed (default: the trainer's seed)")
    parser.add_argument('--run-dir', type=Path, help='replay buffer directory (default: a '
                        'temporary one, removed at the end)')
    parser.add_argument('--tensorboard', type=Path, metavar='DIR', help='write TensorBoard '
                        'logs to DIR')
    add_param_options(parser, 'trainer', 'config/trainer_sim.yaml',
                      'policy-spec parameters (as the driver\'s and trainer\'s)', SPEC_PARAMETERS)
    return parser


def trainer_values(parsed) -> dict:
    """Return the trainer parameter values the command line sets (file, -p, options)."""
    values = param_values(parsed, 'trainer', SPEC_PARAMETERS)
    if parsed.batch_size is not None:
        values['batch_size'] = parsed.batch_size
    if parsed.seed is not None:
        values['seed'] = parsed.seed
    return values


def train(parsed, run_dir: Path) -> dict:
    """Read the bags into a Learner in `run_dir`, train, write the policy; return a report."""
    import torch
    base = config_from_values(TRAINER.read(trainer_values(parsed)))
    torch.set_num_threads(base.torch_threads)
    camera = input_topics(base.camera_topic, base.control_source, parsed.role)['camera']
    frames = count_frames(parsed.bag, camera)
    if frames == 0:
        raise ValueError(f'no {camera} messages in {", ".join(map(str, parsed.bag))}')
    config = replace(
        base, run_dir=run_dir, resume=False, tensorboard=parsed.tensorboard is not None,
        buffer_capacity=max(frames + 16, base.td3.batch_size + 16), learning_starts=0,
        updates_per_step=0.0, bc_pretrain_updates=parsed.bc_updates, initial_policy='',
        checkpoint_every=10**9, state_every=10**9, health_every=10**9)
    learner = Learner(config, _PrintLog(), tensorboard_dir=parsed.tensorboard)
    report = {'bags': [str(b) for b in parsed.bag], 'transitions': 0, 'episodes': 0}
    try:
        for bag in parsed.bag:
            seen = read_bag(bag, config, parsed.role, lambda item: learner.store(parsed.role,
                                                                               item))
            print(f'train_offline: {bag}: ' + ', '.join(f'{k} {v}' for k, v in seen.items()),
                  flush=True)
        report.update(transitions=learner.env_steps, episodes=learner.episodes)
        if learner.buffer.size <= config.td3.batch_size:
            raise ValueError(f'{learner.buffer.size} usable transitions: more than a batch '
                             f'({config.td3.batch_size}) is needed (are the camera, odometry, '
                             'route and command topics in the bags?)')
        report['bc_loss_before'] = learner.bc_loss()
        print(f'train_offline: {learner.env_steps} transitions, {learner.episodes} episodes; '
              f"BC loss {report['bc_loss_before']:.4f}", flush=True)
        progress = Progress('BC', parsed.bc_updates)
        for done in range(1, parsed.bc_updates + 1):
            progress.update(done, learner.bc_step()['bc_mse'])
        progress = Progress('TD3', parsed.td3_updates)
        for done in range(1, parsed.td3_updates + 1):
            metrics = learner.td3_step()
            loss = metrics.get('critic_loss')
            progress.update(done, None if loss is None else float(loss))
        report['bc_loss_after'] = learner.bc_loss()
        report['updates'] = learner.updates
        if learner.tb is not None:
            for key in ('bc_loss_before', 'bc_loss_after'):
                learner.tb.add_scalar(f'offline/{key}', report[key], learner.updates)
        save_policy_state(parsed.out, learner.agent.policy_state(), config.spec, {
            'step': str(learner.updates), 'train_offline': json.dumps(report, sort_keys=True)})
    finally:
        learner.close(save=False)  # the policy is --out; the run directory is scratch
    print(f"train_offline: BC loss {report['bc_loss_before']:.4f} -> "
          f"{report['bc_loss_after']:.4f} after {report['updates']} updates; wrote "
          f'{parsed.out}', flush=True)
    return report


class _PrintLog:
    """The Learner's log on stdout (a tool has no ROS logger)."""

    def info(self, text):
        print(f'train_offline: {text}', flush=True)

    warning = error = fatal = info


def main(args=None):
    """Train a policy from bags on the command line."""
    argv = sys.argv[1:] if args is None else list(args)[1:]
    parsed = build_parser().parse_args(argv)
    if parsed.bc_updates < 0 or parsed.td3_updates < 0:
        sys.exit('train_offline: --bc-updates and --td3-updates must be >= 0')
    try:
        if parsed.run_dir is not None:
            return train(parsed, parsed.run_dir)
        with tempfile.TemporaryDirectory(prefix='train_offline_') as run_dir:
            return train(parsed, Path(run_dir))
    except (ParameterError, ValueError, FileNotFoundError) as error:
        sys.exit(f'train_offline: {error}')


if __name__ == '__main__':
    main()
