"""Move a trust region's anchor on evidence: the acting policy's own episodes, not a clock.

TD3's actor moves on the critic's word alone, and on the stand-in one actor phase moved the
policy off the road long before the new policy's episodes could teach the critic what the
move cost (README "Fine-tuning with TD3", cause 3). A trust region towards a fixed anchor
(`TD3Config.trust_region_anchor: trusted`) bounds how far the actor can go; this gate decides
when the anchor may follow it.

Episodes are grouped into trials. Trial 0 runs before the actor phase: its episodes are the
trusted policy's (the starting policy), and their returns are the reference. Each later
trial is the next `episodes` episodes that start and end within it, driven by the actor as
it moves away from the anchor. When a trial is full:
- its mean return is at least the reference's: **advance**. The learner makes the current
  actor the trusted one, and the trial's returns become the reference;
- otherwise **revert**. The learner puts the actor back on the trusted one; the reference
  stays.

Either way a new trial begins. An episode that began in an earlier trial is not counted: part
of it was driven by a policy the decision has replaced. The reference only moves to a trial
that matched it, so a run of lucky episodes raises the bar rather than lowering it, and the
anchor never drifts down a step at a time. Returns are compared as they are, so the gate
assumes episodes of comparable length and difficulty (laps of similar tracks, routes of
similar length).

Pure and ROS-free; the learner calls it under its buffer lock and applies each decision on
its update thread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

ADVANCE = 'advance'
REVERT = 'revert'


@dataclass
class EvidenceGate:
    """Decide from episode returns when the trusted policy advances or the actor reverts."""

    episodes: int
    """Episodes per trial (> 0)."""
    reference: list[float] = field(default_factory=list)
    """Returns of the trusted policy's episodes (trial 0's, or the last advancing trial's)."""
    trial: list[float] = field(default_factory=list)
    """Returns of the current trial's finished episodes."""
    trial_id: int = 0
    """0 until `open` (the trusted policy drives), then one more per decision."""
    started: dict[str, int] = field(default_factory=dict)
    """The trial in which each stream's open episode began."""

    def __post_init__(self):
        """Refuse a trial of no episodes."""
        if self.episodes < 1:
            raise ValueError(f'episodes per trial must be >= 1, got {self.episodes}')

    def open(self):
        """Start the first trial: from now on the actor moves, and episodes are its evidence."""
        if self.trial_id == 0:
            self._next_trial()

    def on_episode_start(self, stream: str):
        """Note the trial in which `stream`'s new episode begins."""
        self.started[stream] = self.trial_id

    def on_episode_end(self, stream: str, episode_return: float) -> str | None:
        """Count a finished episode; return ADVANCE or REVERT when it completes a trial.

        An episode whose start was not seen, that began in an earlier trial, or whose return
        is not finite counts for nothing.
        """
        began = self.started.pop(stream, None)
        if began != self.trial_id or not math.isfinite(episode_return):
            return None
        if self.trial_id == 0:
            self.reference.append(float(episode_return))
            return None
        self.trial.append(float(episode_return))
        if len(self.trial) < self.episodes:
            return None
        # No reference (the actor moved before any trusted episode ended): the trial's
        # episodes are all the evidence there is of what the policy does.
        holds = not self.reference or _mean(self.trial) >= _mean(self.reference)
        if holds:
            self.reference = self.trial
        self._next_trial()
        return ADVANCE if holds else REVERT

    def _next_trial(self):
        self.trial = []
        self.trial_id += 1

    def state(self) -> dict:
        """Return the gate's state as JSON values (for the learner's training-state file)."""
        return {'reference': list(self.reference), 'trial': list(self.trial),
                'trial_id': self.trial_id, 'started': dict(self.started)}

    def load_state(self, state: dict):
        """Restore a `state` from an earlier run of the same gate."""
        self.reference = [float(v) for v in state['reference']]
        self.trial = [float(v) for v in state['trial']]
        self.trial_id = int(state['trial_id'])
        self.started = {str(k): int(v) for k, v in state['started'].items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
