"""Learning parity of bf16 and fp32 updates: BC loss curves and TD3+BC returns, side by side.

    python bench/precision_parity.py [--threads 1] [--bc-updates 2000] [--td3-updates 1500]

Three arms per part, in one process: fp32, bf16 (autocast, as `precision: bf16|auto` runs
it) and fp32 with another seed. The third arm is the yardstick: bf16 is at parity when its
gap to fp32 is no larger than what a second fp32 run with another seed shows.

1. BC. Noisy-expert data are collected once (`ImitationTrainer.collect`, tracks 1000, +1,
   ...); the last episodes (whole episodes, other tracks) are held out for validation. All
   arms start from the same initial weights; the seed arm draws its minibatches in another
   order. Printed: the training loss (mean of every `--bc-every` updates), the held-out loss
   (fp32 forward: the driver's arithmetic) and the return on `--bc-eval-seeds`, episodes cut
   at `--bc-eval-steps`.
2. TD3+BC fine-tuning (`learning/finetune.Finetuner`, what `finetune_policy` runs), from
   `--start` with bc_weight 1.0 (docs/training.md), for a fixed number of updates
   rather than a CPU budget, so that both precisions see the same number of updates and env
   steps. Printed: critic loss and the actor's BC MSE (means per `--td3-every` updates), and
   the returns on `--td3-eval-seeds` (full episodes) at the start and after the last update.

Evaluation tracks are held out from every recipe: not 500-503 (imitation validation), 600-604
(fine-tuning keep-the-best), 1000+ / 2000+ / 5000+ (collection) or 7000-7009 (the docs'
test tracks). CPU times are this process's; other jobs on the machine do not change them much.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from av_td3_ros.learning.finetune import FinetuneConfig, Finetuner  # noqa: E402
from av_td3_ros.learning.imitation import (  # noqa: E402
    ImitationConfig,
    ImitationTrainer,
    bc_step,
    use_fast_layout,
)
from av_td3_ros.learning.precision import native_bf16  # noqa: E402
from av_td3_ros.learning.td3 import metrics_to_floats  # noqa: E402
from av_td3_ros.policy.checkpoint import PolicySpec, load_policy  # noqa: E402
from av_td3_ros.policy.networks import ActorPolicy  # noqa: E402
from av_td3_ros.sim.evaluation import evaluate_policy, parse_seeds  # noqa: E402
from av_td3_ros.sim.sim_env import SimEnvConfig  # noqa: E402

ARMS = (('fp32', 'fp32', 0), ('bf16', 'bf16', 0), ('fp32 seed 1', 'fp32', 1))
"""(name, precision, seed) of each arm; the last one measures run-to-run noise."""


def episode_split(episode_first: np.ndarray, size: int, fraction: float) -> int:
    """Return the first index of the held-out part: an episode start near `fraction` of `size`.

    Whole episodes are held out so that no frame stack straddles training and validation.
    Raises ValueError when the data hold a single episode (nothing to hold out).
    """
    starts = np.unique(episode_first[:size])
    starts = starts[starts > 0]
    if len(starts) == 0:
        raise ValueError(f'{size} frames hold one episode; collect more to hold some out')
    target = size * (1.0 - fraction)
    return int(starts[np.argmin(np.abs(starts - target))])


def window_means(values: list[float], every: int) -> list[float]:
    """Return the mean of each consecutive window of `every` values (a last partial one too)."""
    return [float(np.mean(values[i:i + every])) for i in range(0, len(values), every)]


def parity_verdict(reference: float, candidate: float, noise: float) -> str:
    """Say whether |candidate - reference| is within the seed-to-seed gap |noise - reference|."""
    gap, spread = abs(candidate - reference), abs(noise - reference)
    word = 'within' if gap <= spread else 'OUTSIDE'
    return f'bf16 gap {gap:.4g} {word} the seed-to-seed gap {spread:.4g}'


def returns_text(results) -> str:
    """Return 'mean (r1 / r2 / ...)' of episode results."""
    returns = [r.episode_return for r in results]
    return f'{np.mean(returns):.1f} ({" / ".join(f"{r:.1f}" for r in returns)})'


def print_curves(title: str, curves: dict[str, list[float]], every: int, digits: int = 4,
                 unit: str = 'updates'):
    """Print windowed means of each arm's per-step values, one row per window."""
    names = list(curves)
    print(f'{title} (mean per {every} {unit})')
    print(f'{unit} | ' + ' | '.join(names))
    windows = {name: window_means(values, every) for name, values in curves.items()}
    for i in range(max(len(w) for w in windows.values())):
        cells = [f'{w[i]:.{digits}f}' if i < len(w) else '-' for w in windows.values()]
        print(f'{i * every + 1}-{(i + 1) * every} | ' + ' | '.join(cells))


# ---------------------------------------------------------------------- BC
def held_out_loss(policy: ActorPolicy, trainer: ImitationTrainer, indices: np.ndarray,
                  chunk: int = 256) -> float:
    """Return the fp32 MSE of `policy` against the expert labels at `indices`."""
    dataset, total = trainer.dataset, 0.0
    with torch.no_grad():
        for i in range(0, len(indices), chunk):
            part = indices[i:i + chunk]
            actions = policy(torch.from_numpy(dataset.stacks(part)),
                             torch.from_numpy(dataset.kinematics[part]))
            labels = torch.from_numpy(dataset.labels[part])
            total += float(torch.sum((actions.float() - labels) ** 2)) / labels.shape[1]
    return total / len(indices)


def bc_arm(trainer: ImitationTrainer, initial: dict, precision: str, seed: int,
           updates: int, split: int) -> tuple[ActorPolicy, list[float], float]:
    """Train a copy of `initial` on data [0, split); return (policy, losses, CPU seconds).

    The update is the recipe's own `bc_step`; only the batch order depends on `seed`.
    """
    config = trainer.config
    policy = ActorPolicy(trainer.spec.network)
    policy.load_state_dict(initial)
    bf16 = precision == 'bf16'
    if bf16:
        use_fast_layout(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(seed)
    buffer = np.zeros((config.batch_size, *trainer.dataset.stacks(np.zeros(1, int)).shape[1:]),
                      np.float32)
    dataset, losses = trainer.dataset, []
    started = time.process_time()
    for _ in range(updates):
        indices = rng.integers(0, split, config.batch_size)
        frames = torch.from_numpy(dataset.stacks(indices, out=buffer))
        losses.append(bc_step(policy, optimizer, frames,
                              torch.from_numpy(dataset.kinematics[indices]),
                              torch.from_numpy(dataset.labels[indices]), bf16))
    cpu = time.process_time() - started
    # The trained weights are evaluated in plain fp32 layout, as a saved policy would be.
    evaluated = ActorPolicy(trainer.spec.network)
    evaluated.load_state_dict({k: v.contiguous() for k, v in policy.state_dict().items()})
    evaluated.eval()
    return evaluated, losses, cpu


def run_bc(args) -> None:
    """Collect once, train every arm, print curves, held-out losses and returns."""
    config = replace(ImitationConfig(), expert_frames=args.bc_frames, dagger_betas=(),
                     log_every=10**9)
    trainer = ImitationTrainer(config, log=lambda text: None)
    started = time.process_time()
    trainer.collect(args.bc_frames, config.collect_seed_start, False, 1.0, 'expert data')
    collect_cpu = time.process_time() - started
    size = trainer.dataset.size
    split = episode_split(trainer.dataset.episode_first, size, args.bc_holdout)
    held_out = np.arange(split, size)
    phase = trainer.report.phases[-1]
    print(f'## BC: {size} noisy-expert frames on tracks {phase["seeds"]} '
          f'({collect_cpu / 60:.1f} CPU-min); training on frames [0, {split}), held out '
          f'[{split}, {size}); {args.bc_updates} updates, batch {config.batch_size}', flush=True)
    initial = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    curves, results = {}, {}
    env = SimEnvConfig(max_episode_steps=args.bc_eval_steps)
    seeds = parse_seeds(args.bc_eval_seeds)
    for name, precision, seed in ARMS:
        policy, curves[name], cpu = bc_arm(trainer, initial, precision, config.seed + seed,
                                           args.bc_updates, split)
        loss = held_out_loss(policy, trainer, held_out)
        episodes = evaluate_policy(policy, trainer.spec, seeds, env) if seeds else []
        results[name] = (loss, episodes, cpu)
        print(f'  {name}: {cpu / 60:.1f} CPU-min of updates, held-out loss {loss:.5f}'
              + (f', return {returns_text(episodes)}' if episodes else ''), flush=True)
    print_curves('BC training loss', curves, args.bc_every, digits=5)
    print('arm | final train loss | held-out loss | return | update CPU-min')
    for name, (loss, episodes, cpu) in results.items():
        tail = float(np.mean(curves[name][-args.bc_every:]))
        text = returns_text(episodes) if episodes else '-'
        print(f'{name} | {tail:.5f} | {loss:.5f} | {text} | {cpu / 60:.1f}')
    fp32, bf16, noise = (results[name] for name, _, _ in ARMS)
    tails = [float(np.mean(curves[name][-args.bc_every:])) for name, _, _ in ARMS]
    print(f'BC final train loss: {parity_verdict(*tails)}')
    print(f'BC held-out loss: {parity_verdict(fp32[0], bf16[0], noise[0])}')
    if seeds:
        means = [np.mean([r.episode_return for r in arm[1]]) for arm in (fp32, bf16, noise)]
        print(f'BC return on tracks {seeds}: {parity_verdict(*means)}', flush=True)


# ---------------------------------------------------------------------- TD3+BC
def finetune_arm(args, config: FinetuneConfig) -> tuple[Finetuner, dict[str, list], float]:
    """Run `args.td3_updates` TD3 updates as `Finetuner.run` schedules them; no evaluations.

    Returns the finetuner, the per-update critic loss and actor BC MSE, and the CPU seconds.
    """
    run_dir = tempfile.mkdtemp(prefix='precision_parity_')
    tuner = Finetuner(args.start, run_dir, config, log=lambda text: None)
    curves = {'critic_loss': [], 'actor_bc_mse': []}
    started = time.process_time()
    while tuner.agent.total_updates < args.td3_updates:
        tuner.act_once()
        steps = tuner.report.env_steps
        if steps < config.prefill_steps:
            continue
        due = min((steps - config.prefill_steps + 1) * config.updates_per_step,
                  args.td3_updates)
        while tuner.agent.total_updates < due:
            metrics = metrics_to_floats(tuner.learn_once())
            for key, values in curves.items():
                if key in metrics:
                    values.append(metrics[key])
    return tuner, curves, time.process_time() - started


def final_policy(tuner: Finetuner) -> ActorPolicy:
    """Return the learner's current actor as a plain fp32 ActorPolicy."""
    policy = ActorPolicy(tuner.spec.network)
    policy.load_state_dict(tuner.agent.policy_state())
    return policy.eval()


def run_td3(args) -> None:
    """Fine-tune from the shipped policy in every arm; print loss curves and returns."""
    base = FinetuneConfig()
    seeds = tuple(parse_seeds(args.td3_eval_seeds))
    updates_after_prefill = args.td3_updates / base.updates_per_step
    td3 = replace(base.td3, bc_weight=1.0, critic_warmup_updates=args.td3_warmup)
    config = replace(base, td3=td3, prefill_steps=args.td3_prefill, eval_seeds=seeds,
                     torch_threads=args.threads,
                     buffer_capacity=int(args.td3_prefill + updates_after_prefill) + 2000)
    print(f'## TD3+BC fine-tuning from {args.start}: bc_weight 1.0, {args.td3_prefill} '
          f'prefill steps, {args.td3_warmup}-update critic warm-up (MC targets), '
          f'{args.td3_updates} updates in all, batch {td3.batch_size}, update-to-data '
          f'{base.updates_per_step}; returns on tracks {list(seeds)} (full episodes)',
          flush=True)
    curves = {'critic_loss': {}, 'actor_bc_mse': {}}
    rows = {}
    start, metadata = load_policy(args.start)
    # Every arm starts from these weights: evaluate them once.
    start_results = evaluate_policy(start.eval(), PolicySpec.from_metadata(metadata),
                                    list(seeds), config.sim)
    print(f'  start: return {returns_text(start_results)}', flush=True)
    for name, precision, seed in ARMS:
        arm = replace(config, td3=replace(td3, precision=precision), seed=seed)
        tuner, arm_curves, cpu = finetune_arm(args, arm)
        try:
            results = evaluate_policy(final_policy(tuner), tuner.spec, list(seeds),
                                      config.sim)
        finally:
            tuner.close()
        rows[name] = (results, cpu, tuner.report.env_steps, tuner.agent.precision)
        for key in curves:
            curves[key][name] = arm_curves[key]
        print(f'  {name} ({tuner.agent.precision}): {cpu / 60:.1f} CPU-min, '
              f'{tuner.report.env_steps} env steps, return {returns_text(results)}', flush=True)
    print_curves('TD3 critic loss', curves['critic_loss'], args.td3_every, digits=3)
    print_curves('TD3+BC actor BC MSE (an actor step every 2nd update after the warm-up)',
                 curves['actor_bc_mse'], max(args.td3_every // 2, 1), digits=5,
                 unit='actor steps')
    print(f'arm | return at start | return after {args.td3_updates} updates | laps | '
          'env steps | CPU-min')
    for name, (results, cpu, steps, _) in rows.items():
        laps = sum(r.lap_complete for r in results)
        print(f'{name} | {returns_text(start_results)} | {returns_text(results)} | '
              f'{laps}/{len(results)} | {steps} | {cpu / 60:.1f}')
    means = [np.mean([r.episode_return for r in rows[name][0]]) for name, _, _ in ARMS]
    print(f'TD3+BC return: {parity_verdict(*means)}', flush=True)


def main(argv=None) -> int:
    """Run the BC and TD3+BC parity arms and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--parts', default='bc,td3', help='bc, td3 or both (bc,td3)')
    parser.add_argument('--bc-frames', type=int, default=8000)
    parser.add_argument('--bc-holdout', type=float, default=0.15,
                        help='fraction of the frames held out (whole episodes)')
    parser.add_argument('--bc-updates', type=int, default=2000)
    parser.add_argument('--bc-every', type=int, default=250)
    parser.add_argument('--bc-eval-seeds', default='650-652', help="'' for none")
    parser.add_argument('--bc-eval-steps', type=int, default=300)
    parser.add_argument('--start', default=str(Path(__file__).resolve().parents[1] / 'models'
                                               / 'camera_policy.safetensors'))
    parser.add_argument('--td3-updates', type=int, default=1500)
    parser.add_argument('--td3-warmup', type=int, default=500)
    parser.add_argument('--td3-prefill', type=int, default=1000)
    parser.add_argument('--td3-every', type=int, default=250)
    parser.add_argument('--td3-eval-seeds', default='650-652')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(','))
    if not parts <= {'bc', 'td3'}:
        parser.error(f'--parts takes bc and/or td3, got {args.parts!r}')
    wall, cpu = time.monotonic(), time.process_time()
    print(f'torch {torch.__version__}, {args.threads} thread(s), native bf16 on this CPU: '
          f'{native_bf16(torch.device("cpu"))}', flush=True)
    if 'bc' in parts:
        run_bc(args)
    if 'td3' in parts:
        run_td3(args)
    print(f'total: {(time.process_time() - cpu) / 60:.1f} CPU-min, '
          f'{(time.monotonic() - wall) / 60:.1f} wall-min')
    return 0


if __name__ == '__main__':
    sys.exit(main())
