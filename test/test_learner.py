# Test if the ROS-free Learner keeps the trainer's schedule (learning_starts, the
# update-to-data ratio, BC pretraining) and resumes exactly where an uninterrupted run goes.
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from av_td3_ros.driving.features import Pose2D, kinematic_vector
from av_td3_ros.learning.checkpoint import PolicySpec, latest_policy, load_policy
from av_td3_ros.learning.learner import (
    Learner,
    LearnerConfig,
    annealed_bc_weight,
    td3_bc_labels,
    uses_monte_carlo_targets,
)
from av_td3_ros.learning.td3 import TD3Config
from av_td3_ros.learning.transitions import EpisodeEnd, EpisodeStart, Transition
from av_td3_ros.sim.expert import expert_actions

BATCH = 8


def config(run_dir: Path, **overrides) -> LearnerConfig:
    """Return a small, exact (fp32, CPU) learner config; nothing saved on a cadence."""
    td3 = TD3Config(batch_size=BATCH, precision='fp32', device='cpu', seed=3,
                    **overrides.pop('td3', {}))
    values = dict(run_dir=run_dir, spec=PolicySpec(), td3=td3, seed=5, resume=True,
                  buffer_capacity=64, buffer_kinematics_dtype='float32', learning_starts=12,
                  updates_per_step=1.0, checkpoint_every=10**6, keep_checkpoints=3,
                  state_every=10**6, health_every=10**6, tensorboard=False)
    values.update(overrides)
    return LearnerConfig(**values)


ROUTE = np.stack([np.linspace(0.0, 120.0, 41), 8.0 * np.sin(np.linspace(0.0, 3.0, 41))], 1)


def experience(steps: int, seed: int, episode_length: int = 10):
    """Yield assembler-like items: episodes of random frames on a curved route."""
    rng = np.random.default_rng(seed)
    for k in range(steps):
        x = rng.uniform(0.0, 60.0)
        pose = Pose2D(x, 8.0 * np.sin(x / 40.0) + rng.normal(0.0, 1.5), rng.normal(0.0, 0.3))
        vec, _ = kinematic_vector(pose, rng.uniform(0.0, 12.0), ROUTE)
        frame = rng.integers(0, 256, (84, 84), np.uint8)
        if k % episode_length == 0:
            yield EpisodeStart(frame, vec)
            continue
        end = k % episode_length == episode_length - 1
        yield Transition(stamp=k, action=rng.uniform(-1, 1, 2).astype(np.float32),
                         reward=float(rng.normal()), next_frame=frame, next_vec=vec,
                         terminated=end, truncated=False)
        if end:
            yield EpisodeEnd(0.0, episode_length - 1, 'collision', False)


def feed(learner: Learner, steps: int, seed: int = 0):
    for item in experience(steps, seed):
        learner.store('ego', item)


def actor_state(learner: Learner) -> dict:
    return {k: v.clone() for k, v in learner.agent.policy_state().items()}


def test_no_update_before_learning_starts_and_the_ratio_holds(tmp_path):
    learner = Learner(config(tmp_path / 'run', updates_per_step=0.5))
    try:
        feed(learner, 12)  # 10 transitions (2 episode starts): below learning_starts
        assert learner.env_steps == 10
        assert learner.due() is None and learner.maybe_update() is None
        feed(learner, 20, seed=1)  # 28 transitions in all
        assert learner.env_steps == 28
        done = 0
        while learner.maybe_update() is not None:
            done += 1
        assert done == learner.agent.total_updates == 14  # 0.5 updates per transition
        assert learner.bc_updates == 0
    finally:
        learner.close()


def test_bc_pretraining_runs_exactly_its_updates_and_lowers_the_bc_loss(tmp_path):
    pretrain = 40
    learner = Learner(config(tmp_path / 'run', bc_pretrain_updates=pretrain,
                             updates_per_step=0.1, td3=dict(actor_lr=1e-3)))
    try:
        feed(learner, 40)
        with learner.buffer_lock:
            everything = learner.buffer.get(np.arange(*learner.buffer.window)[
                learner.buffer.sampleable(np.arange(*learner.buffer.window))])
        labels = torch.from_numpy(learner.labels(everything))

        def bc_loss():
            b = learner.agent.prepare(everything)
            with torch.no_grad():
                features = learner.agent.actor_cnn(b.obs)
                action = learner.agent.actor(torch.cat([features, b.obs_vec], 1))
            return float((action - labels).square().mean())

        before = bc_loss()
        kinds = [learner.maybe_update() for _ in range(pretrain + 10)]
        assert kinds[:pretrain] == ['bc'] * pretrain
        assert learner.bc_updates == pretrain
        # Then TD3 at its ratio: while td3 updates < 36 transitions * 0.1, then nothing due.
        assert kinds[pretrain:] == ['td3'] * 4 + [None] * 6
        assert learner.updates == pretrain + 4
        assert bc_loss() < 0.5 * before
    finally:
        learner.close()


def test_bc_weight_anneals_linearly_after_the_warm_up():
    assert annealed_bc_weight(2.0, 0.0, 0, 500) == 2.0
    assert annealed_bc_weight(2.0, 0.0, 100, -5) == 2.0
    assert annealed_bc_weight(2.0, 0.0, 100, 50) == pytest.approx(1.0)
    assert annealed_bc_weight(2.0, 0.5, 100, 1000) == 0.5


def test_monte_carlo_targets_follow_the_warm_up_and_mc_after_warmup():
    assert uses_monte_carlo_targets(0, 10, 'mc', False)
    assert not uses_monte_carlo_targets(0, 10, 'td', True)  # the warm-up's own choice
    assert not uses_monte_carlo_targets(10, 10, 'mc', False)
    assert uses_monte_carlo_targets(10, 10, 'mc', True)
    assert uses_monte_carlo_targets(10, 0, 'td', True)


def test_mc_after_warmup_gives_the_learners_td3_the_finished_episodes_returns(tmp_path):
    # Every stored episode has ended, so each sampled transition has a Monte Carlo return:
    # with mc_after_warmup the critic's target mean is the batch's mean return, without it a
    # TD target (which, from a random critic, is no such return).
    means = {}
    for keep in (False, True):
        learner = Learner(config(tmp_path / str(keep), mc_after_warmup=keep))
        try:
            feed(learner, 30)
            metrics = learner.td3_step()
            assert learner.agent.total_updates == 1
            means[keep] = float(metrics['target_q_mean'])
        finally:
            learner.close(save=False)
    # The same seed samples the same batch in both runs.
    reference = Learner(config(tmp_path / 'ref', mc_after_warmup=True))
    try:
        feed(reference, 30)
        batch, returns = reference.sample(with_returns=True)
        assert not np.isnan(returns).any()
        assert means[True] == pytest.approx(float(np.mean(returns)), abs=1e-4)
        assert means[False] != pytest.approx(means[True], abs=1e-3)
    finally:
        reference.close(save=False)


def test_td3_bc_labels_are_the_experts_or_the_stored_actions(tmp_path):
    learner = Learner(config(tmp_path / 'run'))
    try:
        feed(learner, 30)
        batch, _ = learner.sample()
    finally:
        learner.close(save=False)
    features = PolicySpec().features
    np.testing.assert_array_equal(td3_bc_labels(batch, features, 'data'), batch.actions)
    expert = td3_bc_labels(batch, features, 'expert')
    np.testing.assert_array_equal(expert, expert_actions(batch.obs_vec, features))
    assert not np.allclose(expert, batch.actions)  # the stored actions are random
    with pytest.raises(ValueError, match='bc_labels'):
        td3_bc_labels(batch, features, 'teacher')


@pytest.mark.parametrize('field', ['bc_labels', 'warmup_targets'])
def test_learner_config_refuses_unknown_choices_by_name(tmp_path, field):
    with pytest.raises(ValueError, match=field):
        config(tmp_path, **{field: 'MC'})


def test_data_labels_pull_the_actor_towards_the_stored_actions(tmp_path):
    # TD3+BC with the stored actions as labels and the BC term alone (alpha 0): the actor
    # moves towards the buffer's actions, which no expert produced.
    overrides = dict(td3=dict(bc_weight=1.0, bc_alpha=0.0, policy_frequency=1,
                              actor_lr=1e-3), bc_labels='data', updates_per_step=100.0)
    learner = Learner(config(tmp_path / 'run', **overrides))
    try:
        feed(learner, 30)
        batch, _ = learner.sample()

        def distance():
            with torch.no_grad():
                b = learner.agent.prepare(batch)
                actions = learner.agent.actor(torch.cat(
                    [learner.agent.actor_cnn(b.obs), b.obs_vec], dim=1))
            return float(((actions - b.actions) ** 2).mean())

        before = distance()
        for _ in range(60):
            learner.td3_step()
        assert distance() < 0.8 * before
    finally:
        learner.close(save=False)


def run_updates(learner: Learner, count: int):
    for _ in range(count):
        assert learner.maybe_update() in ('bc', 'td3')


@pytest.mark.parametrize('warmup', [0, 6])
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, warmup):
    # N updates, save, a new Learner from the run dir, K more: the same weights, Adam state,
    # sampled batches and Monte Carlo warm-up targets as N + K updates in one run.
    n, k = 5, 5
    overrides = dict(td3=dict(critic_warmup_updates=warmup, bc_weight=0.5, policy_frequency=1),
                     bc_pretrain_updates=3, updates_per_step=10.0)
    whole = Learner(config(tmp_path / 'whole', **overrides))
    feed(whole, 30)
    run_updates(whole, n + k)
    expected = whole.agent.state_tensors()[0]
    expected_batch = whole.sample()[0].indices
    whole.close()

    first = Learner(config(tmp_path / 'split', **overrides))
    feed(first, 30)
    run_updates(first, n)
    first.save_state()
    first.close(save=False)  # as if killed: only the state and the buffer survive
    again = Learner(config(tmp_path / 'split', **overrides))
    try:
        assert (again.updates, again.bc_updates, again.env_steps) == (n, 3, first.env_steps)
        run_updates(again, k)
        got = again.agent.state_tensors()[0]
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name
        np.testing.assert_array_equal(again.sample()[0].indices, expected_batch)
    finally:
        again.close()


def test_the_state_and_policies_land_on_the_cadence_and_load(tmp_path):
    run = tmp_path / 'run'
    saved = []
    learner = Learner(config(run, checkpoint_every=4, state_every=4, health_every=4,
                             tensorboard=True),
                      on_policy_saved=lambda path, step: saved.append(step))
    try:
        feed(learner, 20)
        stop = threading.Event()
        worker = threading.Thread(target=learner.run_updates, args=(stop,))
        worker.start()
        try:
            for _ in range(600):
                if learner.agent.total_updates >= learner.env_steps:
                    break
                stop.wait(0.05)
        finally:
            stop.set()
            worker.join()
        assert learner.agent.total_updates == learner.env_steps == 18
    finally:
        learner.close()
    assert saved == [4, 8, 12, 16, 18]  # the cadence, then the closing save
    assert (run / 'training_state.safetensors').exists()
    load_policy(latest_policy(run / 'checkpoints'), PolicySpec())
    assert list((run / 'tb').glob('events.out.tfevents.*'))


def test_a_state_of_another_spec_is_refused_naming_the_difference(tmp_path):
    from av_td3_ros.learning.learner import ResumeError
    run = tmp_path / 'run'
    Learner(config(run)).close()
    other = replace(PolicySpec(), preprocessing=replace(PolicySpec().preprocessing,
                                                        scale='unit'))
    with pytest.raises(ResumeError, match="preprocessing.scale: trainer 'unit'"):
        Learner(config(run, spec=other))
    Learner(config(run)).close()  # the refused learner let go of the run directory


GATED = dict(td3=dict(trust_region_anchor='trusted', trust_region_weight=1.0,
                      critic_warmup_updates=2, policy_frequency=1, actor_lr=1e-2),
             trust_gate_episodes=1)


def store_episode(learner: Learner, episode_return: float, seed: int, length: int = 10):
    """Store one episode of random frames whose trainer return is `episode_return`."""
    items = list(experience(length, seed, episode_length=length))
    ending = items.pop()
    assert isinstance(ending, EpisodeEnd)
    for item in items + [EpisodeEnd(episode_return, ending.steps, ending.reason, False)]:
        learner.store('ego', item)


def run_due_updates(learner: Learner):
    while learner.due() == 'td3':
        learner.td3_step()


def test_a_trusted_anchor_is_the_cloned_actor_after_bc_pretraining(tmp_path):
    learner = Learner(config(tmp_path / 'run', bc_pretrain_updates=3,
                             td3=dict(trust_region_anchor='trusted', trust_region_weight=1.0)))
    try:
        start = actor_state(learner)
        feed(learner, 20)
        run_updates(learner, 3)
        assert learner.bc_updates == 3
        cloned = actor_state(learner)
        assert not same_state(cloned, start)
        assert same_state(trusted_state(learner), cloned)
    finally:
        learner.close(save=False)


def test_the_trust_gate_needs_a_trusted_anchor(tmp_path):
    with pytest.raises(ValueError, match='trust_region_anchor'):
        config(tmp_path, trust_gate_episodes=2)
    with pytest.raises(ValueError, match='trust_gate_episodes'):
        config(tmp_path, trust_gate_episodes=-1,
               td3=dict(trust_region_anchor='trusted'))


def test_the_trust_gate_reverts_a_harmful_actor_advances_a_good_one_and_resumes(tmp_path):
    run = tmp_path / 'run'
    learner = Learner(config(run, **GATED))
    try:
        start = actor_state(learner)
        store_episode(learner, 900.0, seed=1)  # the starting policy's: the reference
        store_episode(learner, 880.0, seed=2)
        run_due_updates(learner)
        moved = actor_state(learner)
        assert not same_state(moved, start)
        assert latest_policy(run / 'checkpoints') is None

        store_episode(learner, -90.0, seed=3)  # the moved actor left the road
        learner.td3_step()
        assert learner.gate_decisions == {'advance': 0, 'revert': 1}
        # Reverted before this update's actor step: one step away from the start, not more.
        assert learner.agent.trusted_actor is not None
        assert same_state(trusted_state(learner), start)
        saved = latest_policy(run / 'checkpoints')  # drivers get the reverted policy at once
        assert saved is not None
        assert same_state(load_policy(saved, PolicySpec())[0].state_dict(), start)
        run_due_updates(learner)

        store_episode(learner, 950.0, seed=4)  # the next move held
        before = actor_state(learner)
        learner.td3_step()
        assert learner.gate_decisions == {'advance': 1, 'revert': 1}
        assert same_state(trusted_state(learner), before)
        assert learner.gate.reference == [950.0]
        learner.save_state()
        expected = learner.gate.state(), dict(learner.gate_decisions)
    finally:
        learner.close(save=False)
    again = Learner(config(run, **GATED))
    try:
        assert (again.gate.state(), again.gate_decisions) == expected
        assert same_state(trusted_state(again), before)
    finally:
        again.close(save=False)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trusted_state(learner: Learner) -> dict:
    agent = learner.agent
    state = {f'cnn.{k}': v for k, v in agent.trusted_actor_cnn.state_dict().items()}
    state.update({f'actor.{k}': v for k, v in agent.trusted_actor.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}
