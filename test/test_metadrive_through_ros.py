"""Test `evaluate_policy --world metadrive --through-ros`: metadrive_bridge + driver processes.

It runs MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes (scripts/test.sh
does) and fails without it; `-m "not metadrive"` leaves it out.
"""
import re
from pathlib import Path

import pytest
from helpers import require_metadrive_venv

from av_td3_ros.tools.evaluate_policy import main

pytestmark = pytest.mark.metadrive
STUDENT = Path(__file__).resolve().parents[1] / 'models' / 'metadrive_camera_policy.safetensors'
LINE = re.compile(r'^seed (\d+): return (-?\d+\.\d), route completion (\d+\.\d) %, '
                  r'([a-z_]+), (\d+) steps$')
SUMMARY = re.compile(r'^mean return (-?\d+\.\d) ± (\d+\.\d) over (\d+) episodes; '
                     r'success (\d+) of (\d+); route completion (\d+\.\d) %$')


# Test if the shipped MetaDrive student loads in the driver node and drives a short seeded
# scenario through the bridge without a crash or leaving the road, and if the tool prints the
# in-process path's episode line and summary line for it.
@pytest.mark.slow
def test_student_drives_a_short_scenario_through_ros(ros_env, capsys):
    require_metadrive_venv()
    status = main(['--world', 'metadrive', '--through-ros', '--checkpoint', str(STUDENT),
                   '--seeds', '8', '--map', '1', '--camera', '84x84', '--max-steps', '60',
                   '--timeout', '400'])
    out = capsys.readouterr().out
    assert status == 0, out
    lines = [line for line in out.splitlines() if not line.startswith('[')]
    assert len(lines) == 2, out
    episode = LINE.match(lines[0])
    assert episode, lines[0]
    assert int(episode.group(1)) == 8
    # Driven to the time limit: no crash, no leaving the road; and along its route.
    assert episode.group(4) == 'time_limit'
    assert int(episode.group(5)) == 60
    assert float(episode.group(3)) > 5.0
    summary = SUMMARY.match(lines[1])
    assert summary, lines[1]
    assert int(summary.group(3)) == int(summary.group(5)) == 1
    assert summary.group(1) == episode.group(2)
    assert summary.group(6) == episode.group(3)
