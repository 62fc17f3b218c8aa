"""Test `evaluate_policy --world metadrive --through-ros`: metadrive_bridge + driver processes.

It runs MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes (scripts/test.sh
does) and fails without it; `-m "not metadrive"` leaves it out.
"""
import re

import pytest
import torch
from helpers import require_metadrive_venv

from av_td3_ros.policy.checkpoint import PolicySpec, save_policy
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.sim.metadrive_results import OUTCOMES
from av_td3_ros.tools.evaluate_policy import main

pytestmark = pytest.mark.metadrive
LINE = re.compile(r'^seed (\d+): return (-?\d+\.\d), route completion (\d+\.\d) %, '
                  r'([a-z_]+), (\d+) steps$')
SUMMARY = re.compile(r'^mean return (-?\d+\.\d) ± (\d+\.\d) over (\d+) episodes; '
                     r'success (\d+) of (\d+); route completion (\d+\.\d) %$')


# Test if a checkpoint drives one short MetaDrive episode through the bridge and driver
# nodes, and the tool prints the in-process path's episode line and summary line for it.
@pytest.mark.slow
def test_checkpoint_episode_through_ros(ros_env, tmp_path, capsys):
    require_metadrive_venv()
    torch.manual_seed(3)
    spec = PolicySpec(network=NetworkConfig(kinematic_inputs='speed',
                                            feature_norm='layernorm_tanh'))
    checkpoint = tmp_path / 'policy.safetensors'
    save_policy(checkpoint, ActorPolicy(spec.network), spec)
    status = main(['--world', 'metadrive', '--through-ros', '--checkpoint', str(checkpoint),
                   '--seeds', '8', '--map', '1', '--camera', '84x84', '--max-steps', '60',
                   '--timeout', '400'])
    out = capsys.readouterr().out
    assert status == 0, out
    lines = [line for line in out.splitlines() if not line.startswith('[')]
    assert len(lines) == 2, out
    episode = LINE.match(lines[0])
    assert episode, lines[0]
    assert int(episode.group(1)) == 8
    assert episode.group(4) in OUTCOMES
    assert 0.0 <= float(episode.group(3)) <= 100.0
    assert 0 < int(episode.group(5)) <= 60
    summary = SUMMARY.match(lines[1])
    assert summary, lines[1]
    assert int(summary.group(3)) == int(summary.group(5)) == 1
    assert summary.group(1) == episode.group(2)
    assert summary.group(6) == episode.group(3)
