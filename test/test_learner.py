# Test if the ROS-free Learner keeps the trainer's schedule (learning_starts, the
# update-to-data ratio, BC pretraining) and resumes exactly where an uninterrupted run goes.
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from av_td3_ros.experts.route_expert import expert_actions
from av_td3_ros.learning.learner import Learner, LearnerConfig
from av_td3_ros.learning.td3 import TD3Config
from av_td3_ros.policy.checkpoint import PolicySpec, latest_policy, load_policy
from av_td3_ros.policy.features import Pose2D, kinematic_vector
from av_td3_ros.task.transitions import EpisodeEnd, EpisodeStart, Transition

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


def run_updates(learner: Learner, count: int):
    for _ in range(count):
        assert learner.maybe_update() in ('bc', 'td3')


@pytest.mark.parametrize('warmup,labels', [(0, 'expert'), (6, 'expert'), (0, 'start')])
def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path, warmup, labels):
    # N updates, save, a new Learner from the run dir, K more: the same weights, Adam state,
    # sampled batches, Monte Carlo warm-up targets and BC labels as N + K updates in one run.
    n, k = 5, 5
    overrides = dict(td3=dict(critic_warmup_updates=warmup, bc_weight=0.5, policy_frequency=1),
                     bc_pretrain_updates=3, updates_per_step=10.0, bc_labels=labels)
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




def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



def test_warm_up_targets_are_the_finished_episodes_returns_then_td(tmp_path):
    # Every stored episode has ended, so each sampled transition has a Monte Carlo return:
    # during the warm-up the critic's target mean is the batch's mean return; after it, a TD
    # target (which, from a random critic, is no such return).
    learner = Learner(config(tmp_path / 'run', td3=dict(critic_warmup_updates=1)))
    reference = Learner(config(tmp_path / 'ref'))  # the same seed samples the same batches
    try:
        feed(learner, 30)
        feed(reference, 30)
        _, returns = reference.sample(with_returns=True)
        assert not np.isnan(returns).any()
        warm = float(learner.td3_step()['target_q_mean'])
        assert warm == pytest.approx(float(np.mean(returns)), abs=1e-4)
        _, returns = reference.sample(with_returns=True)
        after = float(learner.td3_step()['target_q_mean'])
        assert after != pytest.approx(float(np.mean(returns)), abs=1e-3)
    finally:
        learner.close(save=False)
        reference.close(save=False)


def test_learner_config_refuses_unknown_label_sources_by_name(tmp_path):
    with pytest.raises(ValueError, match='bc_labels'):
        config(tmp_path, bc_labels='data')


def test_start_labels_are_the_policy_td3_started_from(tmp_path):
    # BC pretraining clones the expert; then the BC term alone (alpha 0) with start labels
    # holds the actor at that clone, which no expert label would do once the actor moved.
    run = tmp_path / 'run'
    overrides = dict(td3=dict(bc_weight=1.0, bc_alpha=0.0, policy_frequency=1, actor_lr=1e-3),
                     bc_labels='start', bc_pretrain_updates=3, updates_per_step=100.0)
    learner = Learner(config(run, **overrides))
    try:
        feed(learner, 30)
        run_updates(learner, 3)
        cloned = actor_state(learner)
        batch, _ = learner.sample()
        prepared = learner.agent.prepare(batch)
        labels = learner.td3_labels(batch, prepared)
        with torch.no_grad():
            expected = learner.agent.actor(torch.cat(
                [learner.agent.actor_cnn(prepared.obs), prepared.obs_vec], dim=1))
        torch.testing.assert_close(labels, expected)
        for _ in range(20):
            learner.td3_step()
        assert same_state({k: v for k, v in learner.start_policy.state_dict().items()}, cloned)
        assert not np.allclose(labels.numpy(), expert_actions(batch.obs_vec,
                                                              PolicySpec().features))
        learner.save_state()
    finally:
        learner.close(save=False)
    again = Learner(config(run, **overrides))
    try:
        assert same_state(again.start_policy.state_dict(), cloned)
    finally:
        again.close(save=False)
