"""Regenerate a driving policy from the route expert (BC + DAgger on the stand-in simulator).

    train_imitation --out models/camera_policy.safetensors     # the shipped camera policy
    train_imitation --profile route --out runs/route_policy.safetensors
    train_imitation --world metadrive --out models/metadrive_camera_policy.safetensors

Runs `imitation.ImitationTrainer` in-process (no ROS graph), prints progress, writes the best
validated policy (fp16 storage, loads as float32) and a JSON report beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path


def build_config(args):
    """Return the ImitationConfig the command line asks for."""
    if args.world == 'metadrive':
        from av_td3_ros.learning.metadrive_imitation import (
            MetaDriveImitationConfig as ImitationConfig,
        )
    else:
        from av_td3_ros.learning.imitation import ImitationConfig
    config = ImitationConfig(kinematic_inputs='speed' if args.profile == 'camera' else 'all',
                             seed=args.seed, precision=args.precision)
    overrides = {name: getattr(args, name) for name in
                 ('expert_frames', 'bc_updates', 'dagger_frames', 'dagger_updates',
                  'batch_size', 'validate_every', 'log_every')
                 if getattr(args, name) is not None}
    if args.dagger_betas is not None:
        overrides['dagger_betas'] = tuple(float(b) for b in args.dagger_betas.split(',') if b)
    if args.validation_seeds is not None:
        from av_td3_ros.sim.evaluation import parse_seeds
        overrides['validation_seeds'] = tuple(parse_seeds(args.validation_seeds))
    return replace(config, **overrides)


def main(argv=None) -> int:
    """Train and write the policy; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='runs/imitation/policy.safetensors',
                        help='policy file to write (the shipped models are regenerated with '
                             'an explicit --out models/<name>.safetensors)')
    parser.add_argument('--world', choices=('carracing', 'metadrive'), default='carracing',
                        help='carracing: the stand-in and its route expert; metadrive: '
                             "MetaDrive's first-person world and its yielding IDM expert "
                             '(needs scripts/setup.sh --metadrive)')
    parser.add_argument('--profile', choices=('camera', 'route'), default='camera',
                        help='camera: the actor sees speed only of the kinematic vector; '
                             'route: all of it')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'auto'),
                        help='BC update precision (bf16: ~2x faster on AMX/AVX512-BF16 CPUs)')
    parser.add_argument('--expert-frames', type=int)
    parser.add_argument('--bc-updates', type=int)
    parser.add_argument('--dagger-betas', help="comma list, one DAgger round each ('' none)")
    parser.add_argument('--dagger-frames', type=int)
    parser.add_argument('--dagger-updates', type=int)
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--validate-every', type=int)
    parser.add_argument('--validation-seeds', help="held-out tracks, e.g. '500-503'")
    parser.add_argument('--log-every', type=int)
    parser.add_argument('--full-precision', action='store_true',
                        help='store float32 weights (default fp16, half the size)')
    args = parser.parse_args(argv)

    import torch

    if args.world == 'metadrive':
        from av_td3_ros.learning.metadrive_imitation import (
            MetaDriveImitationTrainer as ImitationTrainer,
        )
    else:
        from av_td3_ros.learning.imitation import ImitationTrainer
    torch.set_num_threads(args.threads)
    config = build_config(args)
    print(f'[imitation] config {json.dumps(config.to_dict())}', flush=True)
    trainer = ImitationTrainer(config, log=lambda text: print(text, flush=True))
    try:
        report = trainer.run()
    finally:
        trainer.close()
    out = Path(args.out)
    trainer.save(out, half=not args.full_precision)
    report_path = out.with_suffix('.report.json')
    report_path.write_text(json.dumps({'config': config.to_dict(), **asdict(report)},
                                      indent=1) + '\n')
    print(f'[imitation] wrote {out} (best validation {report.best}) and {report_path}; '
          f'{report.frames} frames, {report.cpu_seconds / 60:.1f} CPU-minutes, '
          f'{report.wall_seconds / 60:.1f} wall minutes', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
