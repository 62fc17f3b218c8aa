# Test if Monte Carlo returns follow G_t = r_t + gamma * G_{t+1} per stream, and forget slots.
import numpy as np
import pytest

from av_td3_ros.learning.mc_returns import MonteCarloReturns


def test_returns_to_go_per_stream_and_unknown_records_are_nan():
    returns = MonteCarloReturns(slots=16, gamma=0.5)
    returns.start('a')
    returns.start('b')
    for index, (stream, reward) in enumerate([('a', 1.0), ('b', 10.0), ('a', 2.0),
                                              ('b', 20.0), ('a', 4.0)]):
        returns.add(index, reward, stream)
    assert np.isnan(returns.lookup([0, 1, 2])).all()  # nothing finished yet
    returns.finish('a')
    np.testing.assert_allclose(returns.lookup([0, 2, 4]), [1 + 0.5 * (2 + 0.5 * 4),
                                                            2 + 0.5 * 4, 4])
    assert np.isnan(returns.lookup([1, 3])).all()  # stream b is still open
    returns.finish('b')
    np.testing.assert_allclose(returns.lookup([1, 3]), [20.0, 20.0])
    assert np.isnan(returns.lookup([99])[0])


def test_an_overwritten_slot_is_unknown_and_a_restart_forgets_the_open_episode():
    returns = MonteCarloReturns(slots=4, gamma=1.0)
    returns.add(1, 5.0)
    returns.finish()
    assert returns.lookup([1])[0] == pytest.approx(5.0)
    returns.add(5, 7.0)  # record 5 reuses record 1's slot
    returns.finish()
    assert np.isnan(returns.lookup([1])[0]) and returns.lookup([5])[0] == pytest.approx(7.0)
    returns.add(6, 1.0)
    returns.start()  # a new episode before the old one finished: its steps are dropped
    returns.add(7, 2.0)
    returns.finish()
    assert np.isnan(returns.lookup([6])[0]) and returns.lookup([7])[0] == pytest.approx(2.0)
