"""Return against CPU time and env steps for imitation, TD3 and SB3 TD3, side by side in one run.

    python bench/learning.py [--arms bc,bc-dagger,td3-scratch,td3-from-bc,td3bc-from-bc,sb3-td3]
        [--cpu-minutes-per-arm 6] [--eval-every 2500] [--bc-start models/camera_policy.safetensors]
        [--jobs 2] [--out-dir runs/learnbench]

Arms (all on the stand-in `SimEnv`, camera profile unless `--profile route`):
- `bc`, `bc-dagger`: `learning/imitation.py`'s recipe, shrunk by `--expert-frames`,
  `--dagger-frames`, `--bc-updates`. Both start from the same noisy-expert data (collected once;
  its CPU time is counted in both) and the same initial network; BC + DAgger trains half the
  updates, lets the student drive one DAgger round, then trains the rest on all data.
- `td3-scratch`: `learning/finetune.py`'s `Finetuner` (the package's collect/update/evaluate
  loop) from a freshly initialised actor; no critic warm-up, exploration noise
  `--scratch-noise`.
- `td3-from-bc`: the same loop from the BC start: plain TD3 after a Monte Carlo critic warm-up
  of `--critic-warmup` updates (docs/training.md: the fix for the myopic critic).
- `td3bc-from-bc`: the same with the BC term (`bc_weight` 1.0, alpha 2.5: docs/training.md's
  recommendation; labels are the route expert's actions on the stored kinematics).
- `sb3-td3`: Stable-Baselines3 TD3 (`MultiInputPolicy`) on `sim/gym_env.SimGymEnv`, which
  gives the actor's observation (4 stacked 84x84 frames + the kinematic vector, masked as the
  profile masks it), the trainer's shaped reward and episode rules. Same batch (64),
  update-to-data ratio (0.5: an update every 2 steps), 2,000 steps before the first update
  (SB3 fills them with uniform random actions), Gaussian noise `--scratch-noise`.

The BC start of the `*-from-bc` arms is the `bc` arm's best validated policy in the same run
(run first), or `--bc-start PATH` (e.g. the shipped camera policy) to save that time; the
output says which. TD3 arms stop after `--cpu-minutes-per-arm` CPU-minutes of acting and
learning (evaluations excluded); SB3 also stops at `--max-env-steps` if given. Every
`--eval-every` env steps (TD3: every eval-every/2 updates after the 2,000-step prefill) each
arm drives the validation tracks (`--validation-seeds`, the recipe's 500-503; never the
docs' test tracks 7000-7009) and prints a row: arm | env steps | learning CPU-min | mean
return. Rows are appended to `<out-dir>/rows.jsonl` as they come; at the end
`<out-dir>/learning_curves.csv` and `.png` (return vs CPU-minutes and vs env steps).
`--plot-only` rebuilds both from rows.jsonl. CPU times are each arm's own process's, on
whatever else the machine is doing; `--jobs` > 1 runs arms in parallel processes.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from av_td3_ros.learning.imitation import ImitationConfig, ImitationTrainer  # noqa: E402
from av_td3_ros.task.reward import STAND_IN_GAMMA  # noqa: E402

IMITATION_ARMS = ('bc', 'bc-dagger')
FROM_BC_ARMS = ('td3-from-bc', 'td3bc-from-bc')
ARMS = IMITATION_ARMS + ('td3-scratch',) + FROM_BC_ARMS + ('sb3-td3',)
PREFILL_STEPS = 2000
UPDATES_PER_STEP = 0.5
BATCH_SIZE = 64


def copy_data(source: ImitationTrainer, target: ImitationTrainer):
    """Give `target` the first `source.dataset.size` steps of `source`'s data."""
    size = source.dataset.size
    for name in ('frames', 'kinematics', 'labels', 'episode_first', 'off_road'):
        getattr(target.dataset, name)[:size] = getattr(source.dataset, name)[:size]
    target.dataset.size = size


class Rows:
    """Print evaluation rows and append them to rows.jsonl as they come."""

    def __init__(self, out_dir: Path):
        """Append to `out_dir`/rows.jsonl."""
        self.path = out_dir / 'rows.jsonl'

    def add(self, arm: str, env_steps: int, cpu_minutes: float, mean_return: float,
            updates: int):
        """Record one evaluation."""
        row = {'arm': arm, 'env_steps': int(env_steps), 'cpu_minutes': round(cpu_minutes, 2),
               'mean_return': round(float(mean_return), 1), 'updates': int(updates)}
        print(f'{arm} | {env_steps} | {cpu_minutes:.2f} | {mean_return:.1f}', flush=True)
        with open(self.path, 'a') as stream:
            stream.write(json.dumps(row) + '\n')


def imitation_config(args) -> ImitationConfig:
    """Return the recipe's config, shrunk to this run's data sizes."""
    from av_td3_ros.sim.evaluation import parse_seeds
    return replace(ImitationConfig(), expert_frames=args.expert_frames,
                   kinematic_inputs='speed' if args.profile == 'camera' else 'all',
                   dagger_frames=args.dagger_frames, log_every=10**9,
                   validation_seeds=tuple(parse_seeds(args.validation_seeds)))


def run_imitation(arms: list[str], args) -> str | None:
    """Run the BC arms on shared data; save the BC arm's best policy, return its path."""
    base = imitation_config(args)
    rows = Rows(args.out_dir)
    trainers = {}

    def printer(name):
        printed = [0]

        def log(text):
            records = trainers[name].report.validations
            for record in records[printed[0]:]:
                rows.add(name, record['env_steps'], record['learning_cpu_minutes'],
                         record['mean_return'], record['updates'])
            printed[0] = len(records)
        return log

    first = ImitationTrainer(replace(base, dagger_betas=()), log=printer(arms[0]))
    trainers[arms[0]] = first
    started = time.process_time()
    first.collect(args.expert_frames, base.collect_seed_start, False, 1.0, 'expert data')
    collect_cpu = time.process_time() - started
    print(f'# {args.expert_frames} expert frames collected in {collect_cpu / 60:.2f} '
          'CPU-min (counted in each imitation arm)', flush=True)
    if len(arms) > 1:
        second = ImitationTrainer(base, log=printer(arms[1]))
        second.policy.load_state_dict(first.policy.state_dict())
        copy_data(first, second)
        trainers[arms[1]] = second
    for name, trainer in trainers.items():
        # CPU from now, plus the shared collection, minus validation (an evaluation cost).
        trainer._cpu_start = time.process_time() - collect_cpu
        trainer._validation_cpu = 0.0
        if name == 'bc':
            trainer.train(args.bc_updates, args.bc_validate_every, 'bc')
        else:
            half = args.bc_updates // 2
            trainer.train(half, args.bc_validate_every, 'bc')
            trainer.collect(args.dagger_frames, base.dagger_seed_start, True, 0.0, 'dagger')
            trainer.train(args.bc_updates - half, args.bc_validate_every, 'dagger 1')
    if 'bc' not in trainers:
        return None
    path = args.out_dir / 'bc_start.safetensors'
    trainers['bc'].save(path, half=False)
    return str(path)


def scratch_start(args) -> str:
    """Write a freshly initialised actor under the profile's spec; return its path."""
    from av_td3_ros.learning.imitation import policy_spec
    from av_td3_ros.policy.checkpoint import save_policy_state
    from av_td3_ros.policy.networks import ActorPolicy
    spec = policy_spec(imitation_config(args))
    torch.manual_seed(args.seed)
    path = args.out_dir / 'scratch_start.safetensors'
    save_policy_state(path, ActorPolicy(spec.network).state_dict(), spec)
    return str(path)


def run_td3(name: str, start: str, args):
    """Run one TD3 arm through the package's Finetuner (collect, update, evaluate)."""
    from av_td3_ros.learning.finetune import FinetuneConfig, Finetuner
    from av_td3_ros.sim.evaluation import parse_seeds
    base = FinetuneConfig()
    if name == 'td3-scratch':
        td3 = replace(base.td3, critic_warmup_updates=0)
        settings = {'exploration_noise': args.scratch_noise}
    else:
        td3 = replace(base.td3, critic_warmup_updates=args.critic_warmup,
                      bc_weight=1.0 if name == 'td3bc-from-bc' else 0.0)
        settings = {}
    config = replace(base, td3=replace(td3, batch_size=BATCH_SIZE), **settings,
                     cpu_minutes=args.cpu_minutes_per_arm, prefill_steps=PREFILL_STEPS,
                     updates_per_step=UPDATES_PER_STEP, buffer_capacity=args.buffer,
                     eval_every_updates=max(round(args.eval_every * UPDATES_PER_STEP), 1),
                     eval_seeds=tuple(parse_seeds(args.validation_seeds)),
                     torch_threads=args.threads, seed=args.seed)
    rows = Rows(args.out_dir)
    run_dir = args.out_dir / f'{name}.run'
    shutil.rmtree(run_dir, ignore_errors=True)
    holder = {}

    def log(text):
        finetuner = holder.get('finetuner')
        if finetuner is None or not text.startswith('[finetune] eval'):
            return
        record = finetuner.report.evaluations[-1]
        rows.add(name, record['env_steps'], record['cpu_minutes'], record['mean_return'],
                 record['updates'])

    finetuner = Finetuner(start, run_dir, config, log=log)
    holder['finetuner'] = finetuner
    try:
        finetuner.run()
    finally:
        finetuner.close()
        shutil.rmtree(run_dir, ignore_errors=True)  # the replay buffer: ~7 kB a step


def run_sb3(name: str, args):
    """Run Stable-Baselines3 TD3 on SimGymEnv under the same budget and evaluation."""
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise

    from av_td3_ros.learning.imitation import policy_spec
    from av_td3_ros.sim.evaluation import parse_seeds
    from av_td3_ros.sim.gym_env import SimGymEnv
    spec = policy_spec(imitation_config(args))
    make = lambda **kw: SimGymEnv(spec.features, spec.preprocessing,  # noqa: E731
                                  spec.network.kinematic_inputs, **kw)
    env, eval_env = make(), make(episode=None)
    seeds = parse_seeds(args.validation_seeds)
    rows = Rows(args.out_dir)
    budget = args.cpu_minutes_per_arm * 60.0

    def evaluate(model) -> float:
        returns = []
        for seed in seeds:
            observation, _ = eval_env.reset(seed=seed)
            done, info = False, {'sim_return': 0.0}
            while not done:
                action, _ = model.predict(observation, deterministic=True)
                observation, _, terminated, truncated, info = eval_env.step(action)
                done = terminated or truncated
            returns.append(info['sim_return'])
        return float(np.mean(returns))

    class Schedule(BaseCallback):
        """Evaluate every `--eval-every` steps; stop at the CPU budget (evaluations excluded)."""

        def _on_training_start(self):
            self.start, self.eval_cpu = started, 0.0
            self._evaluate()

        def learning_cpu(self) -> float:
            return time.process_time() - self.start - self.eval_cpu

        def _evaluate(self):
            cpu = self.learning_cpu()
            before = time.process_time()
            value = evaluate(self.model)
            self.eval_cpu += time.process_time() - before
            rows.add(name, self.num_timesteps, cpu / 60.0, value,
                     getattr(self.model, '_n_updates', 0))

        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                self._evaluate()
            return self.learning_cpu() < budget

    started = time.process_time()
    noise = NormalActionNoise(np.zeros(2), np.full(2, args.scratch_noise))
    model = SB3TD3('MultiInputPolicy', env, buffer_size=args.buffer,
                   learning_starts=PREFILL_STEPS, batch_size=BATCH_SIZE, train_freq=(2, 'step'),
                   gradient_steps=1, action_noise=noise, device='cpu', seed=args.seed,
                   gamma=STAND_IN_GAMMA,
                   verbose=0, policy_kwargs={'net_arch': [256, 256]})
    callback = Schedule()
    model.learn(total_timesteps=args.max_env_steps or 10**9, callback=callback)
    if model.num_timesteps % args.eval_every:
        callback._evaluate()
    env.close()
    eval_env.close()


def run_group(group: list[str], args, bc_start: str | None):
    """Run arms that share a process (the imitation arms share their data)."""
    torch.set_num_threads(args.threads)
    if group[0] in IMITATION_ARMS:
        return run_imitation(group, args)
    name = group[0]
    if name == 'sb3-td3':
        run_sb3(name, args)
    elif name == 'td3-scratch':
        run_td3(name, scratch_start(args), args)
    else:
        run_td3(name, bc_start, args)
    return None


def run_groups(groups: list[list[str]], args, bc_start, jobs: int):
    """Run `groups` `jobs` at a time in fresh processes; return their results."""
    if not groups:
        return []
    if jobs <= 1:
        return [run_group(group, args, bc_start) for group in groups]
    with ProcessPoolExecutor(jobs, mp_context=get_context('spawn')) as pool:
        futures = [pool.submit(run_group, group, args, bc_start) for group in groups]
        return [future.result() for future in futures]


def write_outputs(out_dir: Path, arms_order: list[str]):
    """Write learning_curves.csv and .png from rows.jsonl; print each arm's best and last."""
    rows = [json.loads(line) for line in (out_dir / 'rows.jsonl').read_text().splitlines()
            if line.strip()]
    fields = ['arm', 'env_steps', 'updates', 'cpu_minutes', 'mean_return']
    with open(out_dir / 'learning_curves.csv', 'w', newline='') as stream:
        writer = csv.DictWriter(stream, fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    arms = [a for a in arms_order if any(r['arm'] == a for r in rows)]
    arms += sorted({r['arm'] for r in rows} - set(arms))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    print('arm | best return (env steps, CPU-min) | last return (env steps, CPU-min)')
    for arm in arms:
        mine = sorted((r for r in rows if r['arm'] == arm), key=lambda r: r['env_steps'])
        for axis, key in zip(axes, ('cpu_minutes', 'env_steps'), strict=True):
            axis.plot([r[key] for r in mine], [r['mean_return'] for r in mine], 'o-',
                      label=arm, markersize=3)
        best = max(mine, key=lambda r: r['mean_return'])
        last = mine[-1]
        print(f'{arm} | {best["mean_return"]:.1f} ({best["env_steps"]}, '
              f'{best["cpu_minutes"]:.2f}) | {last["mean_return"]:.1f} '
              f'({last["env_steps"]}, {last["cpu_minutes"]:.2f})')
    axes[0].set_xlabel('learning CPU-minutes (evaluations excluded)')
    axes[1].set_xlabel('env steps')
    axes[0].set_ylabel('mean return, validation tracks')
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / 'learning_curves.png', dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    """Run the selected arms, print the rows, write the CSV and the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arms', default=','.join(ARMS), help=f'comma list of {ARMS}')
    parser.add_argument('--profile', choices=('camera', 'route'), default='camera')
    parser.add_argument('--cpu-minutes-per-arm', type=float, default=6.0)
    parser.add_argument('--max-env-steps', type=int, default=0,
                        help='SB3: also stop at this many env steps (0: CPU budget only)')
    parser.add_argument('--eval-every', type=int, default=2500, help='env steps')
    parser.add_argument('--validation-seeds', default='500-503')
    parser.add_argument('--bc-start', default=None,
                        help="policy for the *-from-bc arms (default: this run's bc arm)")
    parser.add_argument('--expert-frames', type=int, default=40000)
    parser.add_argument('--dagger-frames', type=int, default=12000)
    parser.add_argument('--bc-updates', type=int, default=12000)
    parser.add_argument('--bc-validate-every', type=int, default=1500)
    parser.add_argument('--critic-warmup', type=int, default=1000,
                        help='Monte Carlo critic warm-up updates of the *-from-bc arms')
    parser.add_argument('--scratch-noise', type=float, default=0.3)
    parser.add_argument('--buffer', type=int, default=30000, help='replay capacity')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--jobs', type=int, default=1, help='arms run in parallel')
    parser.add_argument('--out-dir', type=Path, default=Path('runs/learnbench'))
    parser.add_argument('--plot-only', action='store_true')
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(',') if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f'unknown arms {unknown}; choose from {ARMS}')
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        write_outputs(args.out_dir, arms)
        return 0
    (args.out_dir / 'rows.jsonl').unlink(missing_ok=True)
    wall = time.monotonic()
    imitation = [a for a in IMITATION_ARMS if a in arms]
    needs_bc = any(a in FROM_BC_ARMS for a in arms) and args.bc_start is None
    if needs_bc and 'bc' not in arms:
        parser.error('the *-from-bc arms need the bc arm or --bc-start')
    others = [[a] for a in arms if a not in IMITATION_ARMS]
    print(f'# arms {arms}; {args.cpu_minutes_per_arm} CPU-min per TD3/SB3 arm, '
          f'{args.threads} torch thread(s), {args.jobs} job(s); validation tracks '
          f'{args.validation_seeds}; BC start: '
          f'{args.bc_start or "this run" + chr(39) + "s bc arm (run first)"}', flush=True)
    print('arm | env steps | learning CPU-min | mean return', flush=True)
    bc_start = args.bc_start
    if needs_bc:
        # The *-from-bc arms wait for the BC arm; the others run beside it.
        early = [imitation] + [g for g in others if g[0] not in FROM_BC_ARMS]
        bc_start = run_groups(early, args, None, args.jobs)[0]
        run_groups([g for g in others if g[0] in FROM_BC_ARMS], args, bc_start, args.jobs)
    else:
        run_groups(([imitation] if imitation else []) + others, args, bc_start, args.jobs)
    write_outputs(args.out_dir, arms)
    print(f'# wall {(time.monotonic() - wall) / 60:.1f} min; outputs in {args.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
