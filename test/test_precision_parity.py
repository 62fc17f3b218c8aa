# Test if the parity bench holds out whole episodes and judges gaps against the seed spread.
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / 'bench' / 'precision_parity.py'
_SPEC = importlib.util.spec_from_file_location('precision_parity', _PATH)
parity = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(parity)


def test_split_is_the_episode_start_nearest_the_fraction():
    # Episodes start at 0, 40, 70 and 90 of 100 frames; 15 % held out -> target 85 -> 90.
    first = np.repeat([0, 40, 70, 90], [40, 30, 20, 10])
    assert parity.episode_split(first, 100, 0.15) == 90
    assert parity.episode_split(first, 100, 0.35) == 70
    # Never 0, even when the fraction asks for (almost) everything.
    assert parity.episode_split(first, 100, 0.99) == 40
    # Only the filled part counts: frames past `size` are ignored.
    assert parity.episode_split(first, 60, 0.5) == 40


def test_split_of_one_episode_is_refused():
    with pytest.raises(ValueError, match='one episode'):
        parity.episode_split(np.zeros(50, np.int64), 50, 0.15)


def test_window_means_keep_a_partial_last_window():
    assert parity.window_means([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [2.0, 6.0, 9.0]


def test_verdict_compares_the_bf16_gap_with_the_seed_gap():
    assert 'within' in parity.parity_verdict(1.0, 1.1, 0.8)
    assert 'OUTSIDE' in parity.parity_verdict(1.0, 1.3, 0.9)
