"""Score evaluation episodes and keep the policy that scored best (no ROS).

The episode manager runs a few noise-free episodes every so many training episodes
(`task/episode_label.py`); the trainer scores them here instead of learning from them, as
Stable-Baselines3's EvalCallback scores a separate evaluation environment. In the run
directory:

- `eval/episodes.jsonl`: one line per evaluation episode: return, length, end reason, route
  completion, collisions, lane invasions, the policy file that drove it;
- `eval/evaluations.jsonl`: one line per finished evaluation, with the means;
- `best/policy.safetensors` and `best/evaluation.json`: a copy of the policy with the highest
  mean return so far, and its evaluation. Only an evaluation driven by one policy from this
  run's checkpoints can become the best (the driver holds its policy for the evaluation).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from av_td3_ros.task.episode_label import EpisodeLabel
from av_td3_ros.task.transitions import EpisodeEnd

BEST_POLICY = Path('best') / 'policy.safetensors'
BEST_RECORD = Path('best') / 'evaluation.json'


class EvaluationRecorder:
    """Collect one evaluation per vehicle; copy the policy of the best mean return."""

    def __init__(self, run_path: Path, checkpoint_dir: Path, log, scalars=None):
        """Open `run_path`/eval; read the best evaluation so far (a resumed run keeps it).

        `scalars(section, values, step)` adds TensorBoard scalars (None: none).
        """
        self.run_path, self.checkpoint_dir = Path(run_path), Path(checkpoint_dir)
        self.log, self.scalars = log, scalars
        (self.run_path / 'eval').mkdir(parents=True, exist_ok=True)
        self._episodes: dict[str, list[dict]] = {}  # vehicle -> this evaluation's records
        self.evaluations = 0
        self.best_mean_return: float | None = None
        best = self.run_path / BEST_RECORD
        if best.exists():
            try:
                self.best_mean_return = float(json.loads(best.read_text())['mean_return'])
            except (OSError, ValueError, KeyError, TypeError) as error:
                self.log.warning(f'{best} unreadable ({error}): the next evaluation is the best')

    def begin(self, role: str, policy: str | None):
        """Copy the checkpoint `policy` aside as an evaluation starts (it may be pruned later)."""
        self._snapshot(role, policy)

    def record(self, role: str, label: EpisodeLabel, end: EpisodeEnd, policy: str | None,
               counters: dict) -> dict | None:
        """Log one evaluation episode; at its evaluation's last, return the summary."""
        if label.evaluation_index == 1:
            self._episodes[role] = []  # a new evaluation (an unfinished one is dropped)
        record = {'episode': label.number, 'vehicle': role,
                  'evaluation_episode': f'{label.evaluation_index}/{label.evaluation_size}',
                  'return': end.episode_return, 'length': end.steps, 'reason': end.reason,
                  'route_completion': end.route_completion, 'collisions': end.collisions,
                  'lane_invasions': end.lane_invasions, 'policy': policy, **counters,
                  'stamp': time.time()}
        self._append('episodes.jsonl', record)
        self.log.info(f'{role}: evaluation episode {record["evaluation_episode"]} ended '
                      f'({end.reason}): return {end.episode_return:.1f}, route '
                      f'{100 * end.route_completion:.0f} %, collisions {end.collisions}, lane '
                      f'invasions {end.lane_invasions} ({policy or "policy unknown"})')
        records = self._episodes.setdefault(role, [])
        records.append(record)
        if not label.closes_evaluation:
            return None
        del self._episodes[role]
        return self._close(role, records, counters)

    def _close(self, role: str, records: list[dict], counters: dict) -> dict:
        """Summarise one evaluation; copy its policy if it beats the best."""
        self.evaluations += 1
        policies = {record['policy'] for record in records}
        summary = {'vehicle': role, 'episodes': len(records),
                   'mean_return': float(np.mean([r['return'] for r in records])),
                   'std_return': float(np.std([r['return'] for r in records])),
                   'route_completion': float(np.mean([r['route_completion'] for r in records])),
                   'routes_completed': sum(r['route_completion'] == 1.0 for r in records),
                   'collisions': sum(r['collisions'] for r in records),
                   'lane_invasions': sum(r['lane_invasions'] for r in records),
                   'policy': policies.pop() if len(policies) == 1 else None, **counters,
                   'stamp': time.time()}
        source = self._candidate(role, summary['policy'])
        better = (self.best_mean_return is None
                  or summary['mean_return'] > self.best_mean_return)
        summary['best'] = bool(better and source is not None)
        if summary['best']:
            self._keep(source, summary)
        self._append('evaluations.jsonl', summary)
        if self.scalars is not None:
            self.scalars('eval', {name: summary[name] for name in (
                'mean_return', 'route_completion', 'collisions', 'lane_invasions')},
                counters.get('env_steps', self.evaluations))
        why = ('new best, kept in best/' if summary['best'] else
               'not kept: ' + ('driven by more than one policy or an unknown one'
                               if summary['policy'] is None else
                               f'{summary["policy"]} is not in {self.checkpoint_dir}'
                               if source is None else
                               f'best so far {self.best_mean_return:.1f}'))
        self.log.info(f'{role}: evaluation {self.evaluations}: mean return '
                      f'{summary["mean_return"]:.1f} ± {summary["std_return"]:.1f} over '
                      f'{len(records)} episodes, route {100 * summary["route_completion"]:.0f} '
                      f'%, {summary["routes_completed"]} completed, {summary["collisions"]} '
                      f'collisions; {why}')
        return summary

    def _snapshot(self, role: str, name: str | None):
        """Copy this run's checkpoint `name` aside: the trainer may prune it before the end."""
        target = self._snapshot_path(role)
        target.unlink(missing_ok=True)
        if not name or Path(name).name != name or not name.endswith('.safetensors'):
            return
        try:
            shutil.copyfile(self.checkpoint_dir / name, target)
            target.with_suffix('.name').write_text(name)
        except OSError:  # not (or no longer) there: this evaluation cannot be kept
            target.unlink(missing_ok=True)

    def _candidate(self, role: str, name: str | None) -> Path | None:
        """Return the snapshot of `name` taken as this evaluation began, if any."""
        path = self._snapshot_path(role)
        try:
            same = path.with_suffix('.name').read_text() == name
        except OSError:
            return None
        return path if same and path.is_file() else None

    def _snapshot_path(self, role: str) -> Path:
        return self.run_path / 'eval' / f'candidate_{role}.safetensors'

    def _keep(self, source: Path, summary: dict):
        """Copy `source` to best/ atomically (a crash leaves the old best whole)."""
        target = self.run_path / BEST_POLICY
        target.parent.mkdir(exist_ok=True)
        partial = target.with_suffix('.safetensors.tmp')
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        record = self.run_path / BEST_RECORD
        record.with_suffix('.json.tmp').write_text(json.dumps(summary, indent=1) + '\n')
        os.replace(record.with_suffix('.json.tmp'), record)
        self.best_mean_return = summary['mean_return']

    def _append(self, name: str, record: dict):
        with open(self.run_path / 'eval' / name, 'a') as stream:
            stream.write(json.dumps(record) + '\n')
