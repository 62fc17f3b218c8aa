"""Name an episode in episode_start's frame_id: its number, and whether it evaluates.

    <number>                 a training episode
    <number> eval <k>/<n>    the k-th of n noise-free episodes of one evaluation

The episode manager writes it; the driver acts without exploration noise in evaluation
episodes, and the trainer scores them instead of learning from them. A bare number (what
sim_bridge sends) and anything unreadable count as training.
"""
from __future__ import annotations

from dataclasses import dataclass

EVALUATION_WORD = 'eval'


@dataclass(frozen=True)
class EpisodeLabel:
    """One episode's number and its place in an evaluation (0 of 0: training)."""

    number: str
    evaluation_index: int = 0
    """1-based position in its evaluation; 0 for a training episode."""
    evaluation_size: int = 0
    """Episodes in its evaluation; 0 for a training episode."""

    @property
    def evaluating(self) -> bool:
        """Return True for an evaluation episode."""
        return self.evaluation_index > 0

    @property
    def closes_evaluation(self) -> bool:
        """Return True for the last episode of its evaluation."""
        return self.evaluating and self.evaluation_index == self.evaluation_size

    def text(self) -> str:
        """Return the frame_id text."""
        if not self.evaluating:
            return self.number
        return f'{self.number} {EVALUATION_WORD} {self.evaluation_index}/{self.evaluation_size}'


def parse_episode_label(text: str) -> EpisodeLabel:
    """Read a frame_id; anything but `<number> eval <k>/<n>` (1 <= k <= n) is training."""
    parts = text.split()
    if len(parts) == 3 and parts[1] == EVALUATION_WORD:
        index, _, size = parts[2].partition('/')
        if index.isdigit() and size.isdigit() and 1 <= int(index) <= int(size):
            return EpisodeLabel(parts[0], int(index), int(size))
    return EpisodeLabel(text)
