"""Monte Carlo returns of finished episodes, by replay-buffer record (no ROS).

A critic warmed up on these targets knows a state's long-run value from its first updates;
TD targets would carry it back only about one step per target-network lag (see
`finetune.py`). Used by the trainer and the in-process fine-tuning for the critic warm-up.
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np


class MonteCarloReturns:
    """Discounted returns-to-go of every transition of finished episodes.

    `add` each stored transition by buffer record index, `finish` the episode, then `lookup`
    (NaN for open episodes or overwritten slots). The tail after the last step counts as 0.
    """

    def __init__(self, slots: int, gamma: float):
        """Keep returns for `slots` records (the buffer's slot count) discounted by gamma."""
        self.gamma = gamma
        self._values = np.full(slots, np.nan, np.float32)
        self._indices = np.full(slots, -1, np.int64)
        self._open: dict[Hashable, list[tuple[int, float]]] = {}

    def start(self, stream: Hashable = 0):
        """Forget `stream`'s unfinished episode (a new one starts)."""
        self._open[stream] = []

    def add(self, index: int, reward: float, stream: Hashable = 0):
        """Record the transition stored at buffer record `index` with its reward."""
        self._open.setdefault(stream, []).append((int(index), float(reward)))

    def finish(self, stream: Hashable = 0):
        """Compute the returns of `stream`'s episode, which has just ended."""
        value = 0.0
        slots = len(self._values)
        for index, reward in reversed(self._open.pop(stream, [])):
            value = reward + self.gamma * value
            self._values[index % slots] = value
            self._indices[index % slots] = index

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        """Return the returns of buffer records `indices` (NaN where unknown)."""
        indices = np.asarray(indices, np.int64)
        slots = indices % len(self._values)
        known = self._indices[slots] == indices
        return np.where(known, self._values[slots], np.nan).astype(np.float32)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of the finished episodes' returns and their record indices."""
        return self._values.copy(), self._indices.copy()

    def load_state(self, values: np.ndarray, indices: np.ndarray):
        """Restore what `state` returned (open episodes are not kept: they start again)."""
        if values.shape != self._values.shape or indices.shape != self._indices.shape:
            raise ValueError(f'returns of {values.shape[0]} slots do not fit '
                             f'{self._values.shape[0]}')
        self._values[:] = values
        self._indices[:] = indices
