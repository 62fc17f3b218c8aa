"""Return against CPU time and env steps for BC and BC + DAgger, side by side in one run.

    python bench/learning.py [--profile camera|route] [--updates 12000] [--validate-every 1500]

Both arms start from the same noisy-expert data (collected once; its CPU time is counted in
both) and the same initial network. BC trains on it for `--updates` updates. BC + DAgger
trains half of them, lets the student drive one DAgger round (the expert labels its states),
then trains the other half on all data. Every `--validate-every` updates each arm drives the
validation tracks (the recipe's: 500-503). Prints one row per validation: arm, updates, env
steps so far, learning CPU-minutes (collection + updates, validation excluded), mean return,
and at the end each arm's best. CPU times are this process's, on whatever else the machine is
doing; compare arms within one run.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from av_td3_ros.learning.imitation import ImitationConfig, ImitationTrainer  # noqa: E402


def copy_data(source: ImitationTrainer, target: ImitationTrainer):
    """Give `target` the first `source.dataset.size` steps of `source`'s data."""
    size = source.dataset.size
    for name in ('frames', 'kinematics', 'labels', 'episode_first', 'off_road'):
        getattr(target.dataset, name)[:size] = getattr(source.dataset, name)[:size]
    target.dataset.size = size


def main(argv=None) -> int:
    """Run both arms and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', choices=('camera', 'route'), default='camera')
    parser.add_argument('--expert-frames', type=int, default=40000)
    parser.add_argument('--dagger-frames', type=int, default=12000)
    parser.add_argument('--updates', type=int, default=12000)
    parser.add_argument('--validate-every', type=int, default=1500)
    parser.add_argument('--validation-seeds', default='500-503')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    from av_td3_ros.sim.evaluation import parse_seeds
    torch.set_num_threads(args.threads)
    base = replace(ImitationConfig(), expert_frames=args.expert_frames,
                   kinematic_inputs='speed' if args.profile == 'camera' else 'all',
                   dagger_frames=args.dagger_frames, log_every=10**9,
                   validation_seeds=tuple(parse_seeds(args.validation_seeds)))
    quiet = lambda text: None  # noqa: E731
    bc = ImitationTrainer(replace(base, dagger_betas=()), log=quiet)
    started = time.process_time()
    bc.collect(args.expert_frames, base.collect_seed_start, False, 1.0, 'expert data')
    collect_cpu = time.process_time() - started
    dagger = ImitationTrainer(base, log=quiet)
    dagger.policy.load_state_dict(bc.policy.state_dict())
    copy_data(bc, dagger)

    print(f'# {args.profile} profile, {args.expert_frames} expert frames collected in '
          f'{collect_cpu / 60:.1f} CPU-min; validation seeds {list(base.validation_seeds)}')
    print('arm | updates | env steps | learning CPU-min | mean return')
    for name, trainer in (('BC', bc), ('BC+DAgger', dagger)):
        # CPU from now, plus the shared collection, minus validation (an evaluation cost).
        trainer._cpu_start = time.process_time() - collect_cpu
        trainer._validation_cpu = 0.0
        if name == 'BC':
            trainer.train(args.updates, args.validate_every, 'bc')
        else:
            half = args.updates // 2
            trainer.train(half, args.validate_every, 'bc')
            trainer.collect(args.dagger_frames, base.dagger_seed_start, True, 0.0, 'dagger')
            trainer.train(args.updates - half, args.validate_every, 'dagger 1')
        for record in trainer.report.validations:
            print(f'{name} | {record["updates"]} | {record["env_steps"]} | '
                  f'{record["learning_cpu_minutes"]:.1f} | {record["mean_return"]:.1f}',
                  flush=True)
    for name, trainer in (('BC', bc), ('BC+DAgger', dagger)):
        best = trainer.report.best
        print(f'best {name}: {best["mean_return"]:.1f} after {best["updates"]} updates, '
              f'{best["env_steps"]} env steps, {best["learning_cpu_minutes"]:.1f} CPU-min')
    return 0


if __name__ == '__main__':
    sys.exit(main())
