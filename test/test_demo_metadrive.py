"""Tests of `demo --world metadrive`: its episode lines and summary (pure) and one real run.

The `metadrive` test runs metadrive_bridge and the driver as processes over DDS, MetaDrive in
the venv `bash scripts/setup.sh --metadrive` makes (scripts/test.sh does): without it, it
fails, saying so. `-m "not metadrive"` skips it.
"""
import re

import pytest
import torch
from helpers import require_metadrive_venv

from av_td3_ros.policy.checkpoint import PolicySpec, save_policy_state
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.sim.metadrive_results import OUTCOMES, summary_line
from av_td3_ros.tools.demo import metadrive_results

SUMMARY = re.compile(r'^\[demo\] mean return (\S+) ± (\S+) over (\d+) episodes; '
                     r'success (\d+) of (\d+); route completion (\S+) %$', re.MULTILINE)
EPISODE = re.compile(r'^\[demo\]   seed 3: return \S+, route completion \S+ %, ([a-z_]+), '
                     r'(\d+) steps$', re.MULTILINE)


# Test if the demo reads each episode_end text into a result line, and keeps a text without
# the bridge's fields apart rather than failing.
def test_metadrive_results_read_the_bridge_fields():
    results, unreadable = metadrive_results(
        ['terminated:crash;return=12.500;steps=80;route_completion=41.2',
         'truncated:time_limit;steps=30',
         'terminated:arrived;return=300.000;steps=400;route_completion=100.000'], first_seed=7)
    assert [r.line() for r in results] == [
        'seed 7: return 12.5, route completion 41.2 %, crash, 80 steps',
        'seed 9: return 300.0, route completion 100.0 %, arrived, 400 steps']
    assert unreadable == ['truncated:time_limit;steps=30']
    assert summary_line(results) == ('mean return 156.2 ± 143.8 over 2 episodes; '
                                     'success 1 of 2; route completion 70.6 %')


# Test if the demo drives one short MetaDrive episode with a random speed+camera policy
# through the launch file's nodes and ends with the episode's outcome and the summary line.
@pytest.mark.metadrive
@pytest.mark.slow
def test_demo_metadrive_prints_the_summary(start_tool, tmp_path):
    require_metadrive_venv()
    torch.manual_seed(0)
    spec = PolicySpec(network=NetworkConfig(kinematic_inputs='speed',
                                            feature_norm='layernorm_tanh'))
    checkpoint = tmp_path / 'random.safetensors'
    save_policy_state(checkpoint, ActorPolicy(spec.network).state_dict(), spec)
    demo = start_tool('av_td3_ros.tools.demo', '--world', 'metadrive', '--checkpoint',
                      str(checkpoint), '--episodes', '1', '--max-episode-steps', '30',
                      '--seed', '3', '--duration', '400', '--quiet')
    assert demo.wait(timeout=460) == 0, demo.output()
    output = demo.output()
    episode = EPISODE.search(output)
    assert episode, output
    assert episode.group(1) in OUTCOMES
    assert 0 < int(episode.group(2)) <= 30
    summary = SUMMARY.search(output)
    assert summary, output
    assert summary.group(3) == summary.group(5) == '1'
    assert int(summary.group(4)) == (episode.group(1) == 'arrived')
