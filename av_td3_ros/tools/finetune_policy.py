"""Command line: fine-tune a policy checkpoint with TD3 or TD3+BC on the stand-in simulator.

    finetune_policy --start models/camera_policy.safetensors --out runs/ft/policy.safetensors \
        [--cpu-minutes 30] [--bc-weight 1.0 --bc-labels start] [--critic-warmup 5000]

Prints an evaluation line every --eval-every updates and a JSON report; writes the best
evaluated policy to --out (fp16 storage) and, with --last-out, the last one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, replace

from av_td3_ros.learning.finetune import FinetuneConfig, Finetuner
from av_td3_ros.learning.learner import BC_LABELS


def build_config(args) -> FinetuneConfig:
    """Turn command-line arguments into a FinetuneConfig."""
    base = FinetuneConfig()
    td3 = replace(base.td3, bc_weight=args.bc_weight, critic_warmup_updates=args.critic_warmup,
                  actor_lr=args.actor_lr, precision=args.precision, gamma=args.gamma,
                  policy_frequency=args.policy_frequency)
    seeds = tuple(int(s) for s in args.eval_seeds.split(',')) if args.eval_seeds else ()
    sim = base.sim
    if args.sim_steps is not None:
        sim = replace(sim, max_episode_steps=args.sim_steps)
    if args.sim_size:
        width, height = (int(v) for v in args.sim_size.lower().split('x'))
        sim = replace(sim, image_width=width, image_height=height)
    return replace(base, sim=sim, td3=td3, bc_labels=args.bc_labels,
                   cpu_minutes=args.cpu_minutes, prefill_steps=args.prefill,
                   updates_per_step=args.updates_per_step, eval_every_updates=args.eval_every,
                   exploration_noise=args.exploration_noise,
                   eval_seeds=seeds or base.eval_seeds, seed=args.seed)


def main(argv=None) -> int:
    """Run one fine-tuning job and write the best policy."""
    base_td3 = FinetuneConfig().td3
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--start', required=True, help='policy checkpoint to start from')
    parser.add_argument('--out', required=True, help='where to write the best policy')
    parser.add_argument('--last-out', help='also write the policy as the run ends here')
    parser.add_argument('--run-dir', help='replay buffer directory (default: a temp dir)')
    parser.add_argument('--cpu-minutes', type=float, default=30.0)
    parser.add_argument('--bc-weight', type=float, default=0.0,
                        help='TD3+BC term weight (0: plain TD3)')
    parser.add_argument('--bc-labels', choices=BC_LABELS, default=FinetuneConfig.bc_labels,
                        help="the BC term's target: the route expert's action, or the "
                             "starting policy's (a trust region; no expert needed)")
    parser.add_argument('--critic-warmup', type=int, default=2000,
                        help='critic updates before the first actor update')
    parser.add_argument('--actor-lr', type=float, default=3e-4)
    parser.add_argument('--gamma', type=float, default=base_td3.gamma,
                        help='discount factor')
    parser.add_argument('--policy-frequency', type=int, default=base_td3.policy_frequency,
                        help='critic updates per actor update')
    parser.add_argument('--precision', default='auto', help='fp32, bf16 or auto')
    parser.add_argument('--prefill', type=int, default=2000,
                        help='steps of the starting policy before updates')
    parser.add_argument('--updates-per-step', type=float, default=0.5)
    parser.add_argument('--exploration-noise', type=float,
                        default=FinetuneConfig.exploration_noise,
                        help="std of the Gaussian noise on the acting policy's actions")
    parser.add_argument('--eval-every', type=int, default=5000)
    parser.add_argument('--eval-seeds', default='', help='comma-separated held-out seeds')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--sim-steps', type=int, default=None,
                        help='simulator episode step limit (default: the sim_bridge one)')
    parser.add_argument('--sim-size', default=None,
                        help='camera WIDTHxHEIGHT (default: the sim_bridge one)')
    args = parser.parse_args(argv)
    config = build_config(args)
    with tempfile.TemporaryDirectory(prefix='finetune_') as scratch:
        tuner = Finetuner(args.start, args.run_dir or scratch, config)
        try:
            report = tuner.run()
            tuner.save(args.out)
            if args.last_out:
                tuner.save(args.last_out, last=True)
        finally:
            tuner.close()
    summary = {k: v for k, v in asdict(report).items() if k != 'episodes'}
    print(json.dumps(summary))
    print(f'start {report.start_return:.1f}, best {report.best_return:.1f} after '
          f'{report.best_updates} updates; last '
          f'{report.evaluations[-1]["mean_return"]:.1f}; {report.cpu_seconds / 60:.1f} '
          f'CPU-minutes, {report.env_steps} env steps, {report.updates} updates')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
