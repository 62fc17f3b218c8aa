# Test if in-process TD3 fine-tuning runs the trainer's loop end to end and keeps the best.
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from av_td3_ros.learning.finetune import FinetuneConfig, Finetuner
from av_td3_ros.learning.td3 import TD3Config
from av_td3_ros.policy.checkpoint import PolicySpec, load_policy, save_policy_state
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.sim.sim_env import SimEnvConfig
from av_td3_ros.tools.finetune_policy import main as finetune_main

SIM = SimEnvConfig(image_width=96, image_height=64, max_episode_steps=40)


@pytest.fixture
def start_checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = PolicySpec(network=NetworkConfig(feature_norm='layernorm_tanh'))
    path = tmp_path / 'start.safetensors'
    save_policy_state(path, ActorPolicy(spec.network).state_dict(), spec, {'step': '0'})
    return path


def tiny_config(**td3):
    return FinetuneConfig(
        td3=TD3Config(batch_size=8, precision='fp32', critic_warmup_updates=4, **td3),
        cpu_minutes=0.1, prefill_steps=20, updates_per_step=0.5, sync_every=5,
        eval_every_updates=20, eval_seeds=(7,), train_seed_start=11, buffer_capacity=500,
        sim=SIM)


@pytest.mark.parametrize('td3,labels', [({'bc_weight': 0.0}, 'expert'),
                                        ({'bc_weight': 1.0}, 'expert'),
                                        ({'bc_weight': 1.0}, 'start')])
def test_finetune_collects_learns_evaluates_and_keeps_the_best(tmp_path, start_checkpoint,
                                                               td3, labels):
    config = dataclasses.replace(tiny_config(**td3), bc_labels=labels)
    tuner = Finetuner(start_checkpoint, tmp_path / 'run', config, log=lambda line: None)
    try:
        report = tuner.run()
        assert report.env_steps > 20 and report.updates > 4
        assert 0.0 <= report.evaluations[-1]['critic']['dq_dthrottle_pos'] <= 1.0
        assert tuner.buffer.size == min(tuner.buffer.capacity, tuner.buffer.committed)
        assert len(report.evaluations) >= 2
        assert report.evaluations[0]['updates'] == 0
        assert round(report.start_return, 1) == report.evaluations[0]['mean_return']
        assert round(report.best_return, 1) == max(e['mean_return'] for e in report.evaluations)
        assert report.episodes and all(e['reason'] for e in report.episodes)
        out = tmp_path / 'best.safetensors'
        tuner.save(out)
    finally:
        tuner.close()
    policy, metadata = load_policy(out, expected=PolicySpec.from_metadata(metadata_of(out)))
    assert next(policy.parameters()).dtype == torch.float32
    assert json.loads(metadata['finetune_report'])['best_updates'] == report.best_updates


def metadata_of(path):
    with safe_open(str(path), framework='pt') as handle:
        return handle.metadata()


def test_finetune_starts_from_the_checkpoint_and_its_actor_moves(tmp_path, start_checkpoint):
    policy, _ = load_policy(start_checkpoint)
    tuner = Finetuner(start_checkpoint, tmp_path / 'run', tiny_config(), log=lambda line: None)
    try:
        for name, value in policy.state_dict().items():
            assert torch.equal(tuner.agent.policy_state()[name], value)
        while tuner.report.env_steps < 20:
            tuner.act_once()
        for _ in range(10):  # past the 4-update critic warm-up; synced at 5 and 10
            tuner.learn_once()
        moved = [not torch.equal(tuner.agent.policy_state()[k], v)
                 for k, v in policy.state_dict().items()]
        assert any(moved)
        # The acting copy follows the learner every sync_every updates.
        for name, value in tuner.acting.state_dict().items():
            assert torch.equal(value, tuner.agent.policy_state()[name])
    finally:
        tuner.close()


@pytest.mark.parametrize('options', [[], ['--bc-weight', '1', '--bc-labels', 'start']])
def test_cli_writes_a_policy_and_prints_the_summary(tmp_path, start_checkpoint, capsys,
                                                    options):
    out, last = tmp_path / 'out.safetensors', tmp_path / 'last.safetensors'
    code = finetune_main(['--start', str(start_checkpoint), '--out', str(out),
                          '--last-out', str(last),
                          '--cpu-minutes', '0.05', '--prefill', '10', '--critic-warmup', '2',
                          '--eval-every', '10', '--eval-seeds', '7', '--precision', 'fp32',
                          '--sim-steps', '30', '--sim-size', '96x64'] + options)
    assert code == 0 and out.exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith('start ') and 'CPU-minutes' in lines[-1]
    report = json.loads(lines[-2])
    config = json.loads(metadata_of(out)['finetune_config'])
    assert config['bc_labels'] == ('start' if options else 'expert')
    assert np.isfinite(report['start_return'])
    # The last policy is the one the run ended with: named by the run's final update count.
    assert metadata_of(last)['step'] == str(report['updates']) != '0'
    assert metadata_of(out)['step'] == str(report['best_updates'])


def test_warmup_regresses_on_monte_carlo_returns_of_finished_episodes(tmp_path,
                                                                       start_checkpoint):
    tuner = Finetuner(start_checkpoint, tmp_path / 'run', tiny_config(), log=lambda line: None)
    try:
        while len(tuner.report.episodes) < 2:
            tuner.act_once()
        gamma = tuner.config.td3.gamma
        batch = tuner.buffer.sample(64, tuner.rng)
        returns = tuner.returns.lookup(batch.indices)
        assert np.isfinite(returns).any()
        # Spot-check the recursion G_t = r_t + gamma * G_{t+1} on consecutive records.
        index = int(batch.indices[np.isfinite(returns)][0])
        following = tuner.returns.lookup(np.array([index + 1]))[0]
        later = tuner.buffer.get(np.array([index]))
        if np.isfinite(following):
            assert returns[np.isfinite(returns)][0] == pytest.approx(
                later.rewards[0] + gamma * following, rel=1e-5)
        # An unknown index (never written) has no return.
        assert np.isnan(tuner.returns.lookup(np.array([10**9]))[0])
    finally:
        tuner.close()


def test_monte_carlo_targets_serve_the_warmup_only(tmp_path, start_checkpoint):
    config = tiny_config()
    tuner = Finetuner(start_checkpoint, tmp_path / 'run', config, log=lambda line: None)
    given = []
    update = tuner.agent.update

    def recording_update(batch, labels=None, returns=None):
        given.append((tuner.agent.total_updates, returns is not None))
        return update(batch, labels, returns)

    tuner.agent.update = recording_update
    try:
        while len(tuner.report.episodes) < 2:
            tuner.act_once()
        for _ in range(8):
            tuner.learn_once()
    finally:
        tuner.close()
    warmup = config.td3.critic_warmup_updates
    assert all(with_returns for done, with_returns in given if done < warmup)
    later = [with_returns for done, with_returns in given if done >= warmup]
    assert later and not any(later)


def test_an_unknown_label_source_fails_when_the_config_is_built():
    with pytest.raises(ValueError, match='bc_labels'):
        dataclasses.replace(tiny_config(), bc_labels='typo')


def test_the_learner_gets_the_runs_schedule(tmp_path, start_checkpoint):
    config = dataclasses.replace(tiny_config(bc_weight=1.0), bc_labels='start', seed=3)
    tuner = Finetuner(start_checkpoint, tmp_path / 'run', config, log=lambda line: None)
    try:
        learner = tuner.learner.config
        assert learner.bc_labels == 'start' and learner.td3.seed == 3
        assert learner.td3.bc_weight == 1.0 and learner.initial_policy == str(start_checkpoint)
    finally:
        tuner.close()

