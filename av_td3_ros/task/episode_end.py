"""Write and read the episode_end message (`/av_td3/<role>/episode_end`, std_msgs/String).

The simulator side publishes one when it ends an episode itself:

    <terminated|truncated>:<reason>[;return=<float>][;steps=<int>][;stamp_ns=<int>][;k=v...]

e.g. `truncated:stuck;steps=412;stamp_ns=20600000000`. The trainer needs only the part
before the first `;`; the fields after it are optional, so `truncated:time_limit` parses too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpisodeEndMessage:
    """One episode_end message's content."""

    kind: str
    """'terminated' or 'truncated' (read as given; `terminated`/`truncated` test it)."""
    reason: str
    """Why, e.g. lap_complete, off_track, time_limit, stuck."""
    episode_return: float | None = None
    """The simulator's own episode return (`return=`), when it has one."""
    steps: int | None = None
    """Control steps of the episode."""
    stamp_ns: int | None = None
    """Stamp of the episode's last frame (integer nanoseconds)."""
    extra: tuple[tuple[str, str], ...] = ()
    """Other `key=value` fields, in order, as text (a field without `=` has value '')."""

    @property
    def terminated(self) -> bool:
        """Return True for a terminal end (no bootstrapping from its last state)."""
        return self.kind == 'terminated'

    @property
    def truncated(self) -> bool:
        """Return True for a cut-off end (a time limit: still bootstraps)."""
        return self.kind == 'truncated'


def format_episode_end(end: EpisodeEndMessage) -> str:
    """Return the message text for `end` (fields that are None are left out)."""
    parts = [f'{end.kind}:{end.reason}']
    if end.episode_return is not None:
        parts.append(f'return={end.episode_return:.3f}')
    if end.steps is not None:
        parts.append(f'steps={end.steps}')
    if end.stamp_ns is not None:
        parts.append(f'stamp_ns={end.stamp_ns}')
    parts.extend(f'{key}={value}' if value else key for key, value in end.extra)
    return ';'.join(parts)


def parse_episode_end(text: str) -> EpisodeEndMessage:
    """Read an episode_end text; raise ValueError when a known number field does not parse.

    The head never fails: `parse_episode_end(text.split(';')[0])` always reads.
    """
    head, *fields = text.split(';')
    kind, _, reason = head.partition(':')
    numbers: dict[str, float | int] = {}
    extra = []
    for field in fields:
        key, _, value = field.partition('=')
        if key not in ('return', 'steps', 'stamp_ns'):
            if key:
                extra.append((key, value))
            continue
        try:
            numbers['episode_return' if key == 'return' else key] = (
                float(value) if key == 'return' else int(value))
        except ValueError:
            raise ValueError(f'episode_end {text!r}: {key}={value!r} is not a number') from None
    return EpisodeEndMessage(kind, reason, extra=tuple(extra), **numbers)
