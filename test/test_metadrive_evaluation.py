"""Tests of `evaluate_policy --world metadrive` and its pure module (plain pytest, no ROS).

The `metadrive` tests run MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes
(scripts/test.sh does): without it they fail, saying so. `-m "not metadrive"` skips them.
"""
import re

import numpy as np
import pytest
from helpers import require_metadrive_venv

from av_td3_ros.sim.metadrive_results import (
    OUTCOMES,
    MetaDriveResult,
    RouteProgress,
    summary_line,
)
from av_td3_ros.tools import evaluate_policy

LINE = re.compile(r'^seed (\d+): return (-?\d+\.\d), route completion (\d+\.\d) %, '
                  r'([a-z_]+), (\d+) steps$')
SUMMARY = re.compile(r'^mean return (-?\d+\.\d) ± (\d+\.\d) over (\d+) episodes; '
                     r'success (\d+) of (\d+); route completion (\d+\.\d) %$')


# Test if the summary counts arrivals as successes and averages the route completion.
def test_summary_line_counts_arrivals():
    results = [MetaDriveResult(1, 10.0, 100.0, 'arrived', 50),
               MetaDriveResult(2, 20.0, 50.0, 'crash', 30)]
    assert summary_line(results) == ('mean return 15.0 ± 5.0 over 2 episodes; success 1 of 2; '
                                     'route completion 75.0 %')


# Test if the route progress follows a straight route and never goes backwards.
def test_route_progress_is_monotone():
    progress = RouteProgress(np.stack([np.arange(11.0), np.zeros(11)], axis=1))
    assert progress.update(5.2, 0.3) == pytest.approx(50.0)
    assert progress.update(1.0, 0.0) == pytest.approx(50.0)
    assert progress.update(10.0, 0.0) == pytest.approx(100.0)


# Test if --through-ros with MetaDrive refuses the expert (the driver node has none of
# MetaDrive's) and seeds that are not consecutive, each with exit status 2 and a message.
def test_through_ros_refusals(capsys, tmp_path):
    with pytest.raises(SystemExit) as refused:
        evaluate_policy.main(['--world', 'metadrive', '--expert', '--through-ros'])
    assert refused.value.code == 2
    assert '--through-ros drives a checkpoint' in capsys.readouterr().err
    assert evaluate_policy.main(['--world', 'metadrive', '--through-ros', '--checkpoint',
                                 str(tmp_path / 'policy.safetensors'), '--seeds', '5,7']) == 2
    assert 'consecutive seeds' in capsys.readouterr().err


# Test if the tool drives the privileged expert and prints one line per episode and a summary
# whose success count matches the arrivals among the outcomes.
@pytest.mark.metadrive
@pytest.mark.slow
def test_expert_evaluation_lines(capsys):
    require_metadrive_venv()
    status = evaluate_policy.main(['--world', 'metadrive', '--expert', '--seeds', '5-6',
                                   '--map', '1', '--camera', '32x32', '--max-steps', '80'])
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    episodes = [LINE.match(line) for line in lines[:2]]
    assert all(episodes), lines
    assert [int(m.group(1)) for m in episodes] == [5, 6]
    outcomes = [m.group(4) for m in episodes]
    assert set(outcomes) <= set(OUTCOMES)
    for match in episodes:
        assert 0.0 <= float(match.group(3)) <= 100.0
        assert 0 < int(match.group(5)) <= 80
    summary = SUMMARY.match(lines[-1])
    assert summary, lines[-1]
    assert int(summary.group(3)) == int(summary.group(5)) == 2
    assert int(summary.group(4)) == outcomes.count('arrived')
