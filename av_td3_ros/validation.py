"""Check configuration values and name the field in the error (the one place for it).

Every config dataclass validates in `__post_init__` with these, so a bad value fails when
the config is built, with the same wording wherever it came from (a ROS parameter, a
command-line flag, a YAML file or a checkpoint).
"""
from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value, choices: Iterable):
    """Raise ValueError unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')


def check_range(name: str, value, low=None, high=None, *, low_open: bool = False,
                high_open: bool = False):
    """Raise ValueError unless low <= value <= high (strict where `low_open`/`high_open`).

    NaN is outside every range.
    """
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above or value != value:
        left = '(' if low_open else '['
        right = ')' if high_open else ']'
        low_text = '-inf' if low is None else low
        high_text = 'inf' if high is None else high
        raise ValueError(f'{name} must be in {left}{low_text}, {high_text}{right}, '
                         f'got {value}')


def check_at_least(owner, low, *names: str):
    """Raise ValueError unless each named attribute of `owner` is >= `low`."""
    for name in names:
        value = getattr(owner, name)
        if not value >= low:
            raise ValueError(f'{name} must be >= {low}, got {value}')
