"""MetaDrive episode results: outcome, route completion and the summary line (numpy only).

One place for what an episode's result is and how it reads, whether it ran in-process
(`metadrive_evaluation`) or over ROS (`metadrive_bridge`'s episode_end, read back by
`result_from_episode_end`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from av_td3_ros.task.episode_end import parse_episode_end

OUTCOMES = ('arrived', 'crash', 'out_of_road', 'time_limit', 'simulator_fault')


@dataclass(frozen=True)
class MetaDriveResult:
    """How one MetaDrive evaluation episode went."""

    seed: int
    episode_return: float
    route_completion: float
    """Percent of the route's length up to the point nearest the car's furthest progress."""
    outcome: str
    """One of OUTCOMES, or the client's other end reason (e.g. bad_command)."""
    steps: int

    @property
    def arrived(self) -> bool:
        """Return True when the car reached its destination."""
        return self.outcome == 'arrived'

    def line(self) -> str:
        """Return the one-line report of this episode."""
        return (f'seed {self.seed}: return {self.episode_return:.1f}, route completion '
                f'{self.route_completion:.1f} %, {self.outcome}, {self.steps} steps')


def summary_line(results: list[MetaDriveResult]) -> str:
    """Return 'mean return X ± Y over N episodes; success S of N; route completion C %'."""
    count = len(results)
    if not count:
        return 'mean return nan ± nan over 0 episodes; success 0 of 0; route completion nan %'
    returns = np.array([r.episode_return for r in results], np.float64)
    success = sum(r.arrived for r in results)
    completion = float(np.mean([r.route_completion for r in results]))
    return (f'mean return {returns.mean():.1f} ± {returns.std():.1f} over {count} episodes; '
            f'success {success} of {count}; route completion {completion:.1f} %')


class RouteProgress:
    """Track how far along a route (n, 2+) a car got, as a percent of the route's length."""

    WINDOW = 30
    """Points searched ahead of the last match: a route may pass near itself (loops,
    intersections), and a global nearest point would jump there."""

    def __init__(self, route: np.ndarray):
        """Follow `route`, the lane centres from the episode's first state."""
        self.points = np.asarray(route, float)[:, :2]
        lengths = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.arc = np.concatenate([[0.0], np.cumsum(lengths)])
        self.index = 0

    def update(self, x: float, y: float) -> float:
        """Advance to the route point nearest (x, y) within the window; return the percent."""
        if len(self.points) < 2 or self.arc[-1] <= 0.0:
            return 0.0
        low = max(self.index - 2, 0)
        window = self.points[low:self.index + self.WINDOW]
        nearest = low + int(np.argmin(np.linalg.norm(window - (x, y), axis=1)))
        self.index = max(self.index, nearest)
        return self.percent

    @property
    def percent(self) -> float:
        """Return the completion so far in percent."""
        if len(self.points) < 2 or self.arc[-1] <= 0.0:
            return 0.0
        return float(100.0 * self.arc[self.index] / self.arc[-1])


def route_completion(outcome: str, progress: RouteProgress) -> float:
    """Return an episode's route completion in percent: 100 when it arrived."""
    # The route's last point lies short of where MetaDrive counts an arrival.
    return 100.0 if outcome == 'arrived' else progress.percent


def result_from_episode_end(seed: int, text: str) -> MetaDriveResult:
    """Read a metadrive_bridge episode_end text; raise ValueError when a field is missing."""
    end = parse_episode_end(text)
    completion = dict(end.extra).get('route_completion')
    if end.episode_return is None or end.steps is None or completion is None:
        raise ValueError(f'episode_end {text!r} has no return, steps or route_completion')
    return MetaDriveResult(seed, end.episode_return, float(completion), end.reason, end.steps)
