"""Tests of evaluate_policy: seed parsing, ablations, the in-process command line."""
import pytest
import torch

from av_td3_ros.policy.checkpoint import PolicySpec, save_policy
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.sim.evaluation import parse_seeds, reference_states
from av_td3_ros.tools.evaluate_policy import ablated, episode_seeds, main


def test_seed_lists_and_ranges():
    assert parse_seeds('7000-7003') == [7000, 7001, 7002, 7003]
    assert parse_seeds('1,5, 9') == [1, 5, 9]
    assert parse_seeds('0-1,10') == [0, 1, 10]
    with pytest.raises(ValueError):
        parse_seeds('9-3')
    assert episode_seeds([4, 8], 4) == [4, 8, 9, 10]
    assert episode_seeds([4, 8, 12], 2) == [4, 8]


@pytest.mark.parametrize('ablate', ['camera', 'kinematics'])
def test_ablation_changes_the_actions(ablate):
    torch.manual_seed(0)
    spec = PolicySpec(network=NetworkConfig(feature_norm='layernorm_tanh'))
    policy = ActorPolicy(spec.network).eval()
    frames, vectors = reference_states(spec, 3, steps=40)
    with torch.no_grad():
        actions = policy(frames, vectors)
        ablated_actions = ablated(policy, spec, ablate)(frames, vectors)
    assert ablated_actions.shape == actions.shape
    assert not torch.allclose(actions, ablated_actions, atol=1e-4)
    # the ablated input no longer matters: shuffling it leaves the actions unchanged
    shuffled = torch.randperm(len(frames))
    with torch.no_grad():
        model = ablated(policy, spec, ablate)
        if ablate == 'camera':
            again = model(frames[shuffled], vectors)
        else:
            again = model(frames, vectors[shuffled])
    assert torch.allclose(again, ablated_actions, atol=1e-6)


def test_command_line_prints_episodes_and_the_mean(capsys):
    assert main(['--expert', '--seeds', '21-22']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith('seed 21: return ') and 'lap completed' in lines[0]
    assert lines[-1].startswith('mean return ') and lines[-1].endswith('over 2 episodes')


def test_command_line_refuses_a_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a checkpoint')
    assert main(['--checkpoint', str(bad), '--seeds', '1']) == 2
    assert 'evaluate_policy' in capsys.readouterr().err


def test_checkpoint_episode_runs_through_the_driver_pipeline(tmp_path, capsys):
    torch.manual_seed(1)
    spec = PolicySpec(network=NetworkConfig(kinematic_inputs='speed'))
    path = tmp_path / 'random.safetensors'
    save_policy(path, ActorPolicy(spec.network), spec)
    assert main(['--checkpoint', str(path), '--seeds', '3', '--ablate', 'camera']) == 0
    out = capsys.readouterr().out
    assert 'seed 3: return' in out and 'over 1 episodes' in out


def test_an_episode_end_belongs_to_the_newest_start_not_after_it():
    from av_td3_ros.tools.evaluate_policy import episode_of
    end = 'truncated:time_limit;return=87.0;steps=120;stamp_ns={}'.format
    starts = [(5_000, 1), (11_000, 2)]
    assert episode_of(end(10_950), starts) == 1
    assert episode_of(end(11_000), starts) == 2  # cannot happen on one tick; newest wins
    assert episode_of(end(4_000), starts) == -1  # the warm-up, whose start was missed
    assert episode_of(end(4_000), []) is None  # not decidable yet
    assert episode_of('truncated:time_limit;return=1.0;steps=3', starts) is None
