# Test if the evidence gate moves the trusted policy only on trials that match its returns,
# reverts otherwise, and counts only the episodes a trial's own policy drove.
import json
import math

import pytest

from av_td3_ros.learning.policy_gate import ADVANCE, REVERT, EvidenceGate


def finish(gate: EvidenceGate, *returns: float, stream: str = 'ego') -> list:
    decisions = []
    for value in returns:
        gate.on_episode_start(stream)
        decisions.append(gate.on_episode_end(stream, value))
    return decisions


def test_the_trusted_policys_episodes_are_the_reference_until_the_gate_opens():
    gate = EvidenceGate(episodes=2)
    assert finish(gate, 900.0, 500.0, 700.0) == [None, None, None]
    assert gate.reference == [900.0, 500.0, 700.0]
    gate.open()
    gate.open()  # opening twice starts no second trial
    assert gate.trial_id == 1


def test_a_trial_that_matches_the_reference_advances_and_becomes_the_reference():
    gate = EvidenceGate(episodes=2)
    finish(gate, 800.0, 600.0)  # mean 700
    gate.open()
    assert finish(gate, 750.0, 650.0) == [None, ADVANCE]  # mean 700: no worse
    assert gate.reference == [750.0, 650.0]
    assert (gate.trial, gate.trial_id) == ([], 2)


def test_a_trial_below_the_reference_reverts_and_the_reference_stays():
    gate = EvidenceGate(episodes=3)
    finish(gate, 900.0, 910.0)
    gate.open()
    assert finish(gate, 950.0, 930.0, -80.0) == [None, None, REVERT]
    assert gate.reference == [900.0, 910.0]
    # The bar never drops: the next trial is judged against the same trusted returns.
    assert finish(gate, 905.0, 905.0, 905.0)[-1] == ADVANCE
    assert finish(gate, 904.0, 905.0, 905.0)[-1] == REVERT


def test_episodes_a_replaced_policy_drove_count_for_nothing():
    gate = EvidenceGate(episodes=1)
    finish(gate, 500.0)
    gate.on_episode_start('a')  # begins in trial 0 (the trusted policy) ...
    gate.open()
    assert gate.on_episode_end('a', 900.0) is None  # ... ends in trial 1: neither's
    gate.on_episode_start('b')
    assert finish(gate, 600.0, stream='c') == [ADVANCE]  # trial 2 begins
    assert gate.on_episode_end('b', -90.0) is None  # began in trial 1
    assert gate.on_episode_end('never-started', -90.0) is None
    assert finish(gate, math.nan, math.inf) == [None, None]
    assert gate.reference == [600.0] and gate.trial == []


def test_streams_are_counted_separately():
    gate = EvidenceGate(episodes=2)
    finish(gate, 100.0)
    gate.open()
    gate.on_episode_start('a')
    gate.on_episode_start('b')
    assert gate.on_episode_end('b', 50.0) is None
    assert gate.on_episode_end('a', 140.0) == REVERT  # mean 95 against 100


def test_with_no_trusted_episode_the_first_trial_is_the_evidence():
    gate = EvidenceGate(episodes=2)
    gate.open()
    assert finish(gate, -50.0, -70.0) == [None, ADVANCE]
    assert gate.reference == [-50.0, -70.0]


def test_the_state_round_trips_through_json_values():
    gate = EvidenceGate(episodes=3)
    finish(gate, 800.0, 820.0)
    gate.open()
    finish(gate, 700.0)
    gate.on_episode_start('ego')
    again = EvidenceGate(episodes=3)
    again.load_state(json.loads(json.dumps(gate.state())))
    assert again == gate
    assert again.on_episode_end('ego', 900.0) is None
    assert finish(again, 950.0) == [ADVANCE]  # mean 850 >= 810


def test_a_trial_needs_at_least_one_episode():
    with pytest.raises(ValueError, match='episodes per trial'):
        EvidenceGate(episodes=0)
