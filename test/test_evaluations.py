# Test scoring evaluation episodes and keeping the best policy (learning/evaluations.py), and
# that the driving pipeline acts without noise in evaluation episodes.
import json
import logging

import numpy as np
import pytest
from helpers import straight_route

from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.experts.exploration import ExplorationConfig
from av_td3_ros.learning.evaluations import BEST_POLICY, BEST_RECORD, EvaluationRecorder
from av_td3_ros.policy.checkpoint import PolicySpec
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.preprocessing import ImageView
from av_td3_ros.task.episode_label import EpisodeLabel
from av_td3_ros.task.transitions import EpisodeEnd

LOG = logging.getLogger('test')


def end(episode_return, reason='simulator: time_limit', completion=0.5, collisions=0):
    return EpisodeEnd(episode_return, 100, reason, False, completion, collisions, 2)


def evaluate(recorder, returns, policy, first=1):
    """Record one evaluation of len(returns) episodes; return its summary."""
    summary = None
    recorder.begin('ego', policy)
    for k, value in enumerate(returns, start=1):
        summary = recorder.record('ego', EpisodeLabel(str(first + k), k, len(returns)),
                                  end(value), policy, {'env_steps': 10 * first})
        assert (summary is None) == (k < len(returns))
    return summary


@pytest.fixture
def run(tmp_path):
    checkpoints = tmp_path / 'checkpoints'
    checkpoints.mkdir()
    for step in (1, 2, 3):
        (checkpoints / f'policy_{step}.safetensors').write_bytes(bytes([step]) * 16)
    return tmp_path, checkpoints


# Test if the best mean return's policy is copied, a worse one is not, and a resumed recorder
# remembers the best.
def test_the_policy_of_the_best_evaluation_is_kept(run):
    path, checkpoints = run
    recorder = EvaluationRecorder(path, checkpoints, LOG)
    first = evaluate(recorder, [10.0, 20.0, 30.0], 'policy_1.safetensors')
    assert first['best'] and first['mean_return'] == pytest.approx(20.0)
    assert (path / BEST_POLICY).read_bytes() == bytes([1]) * 16
    worse = evaluate(recorder, [5.0, 5.0, 5.0], 'policy_2.safetensors', first=4)
    assert not worse['best']
    assert (path / BEST_POLICY).read_bytes() == bytes([1]) * 16
    resumed = EvaluationRecorder(path, checkpoints, LOG)
    assert resumed.best_mean_return == pytest.approx(20.0)
    better = evaluate(resumed, [25.0, 25.0, 25.0], 'policy_3.safetensors', first=7)
    assert better['best']
    assert (path / BEST_POLICY).read_bytes() == bytes([3]) * 16
    assert json.loads((path / BEST_RECORD).read_text())['policy'] == 'policy_3.safetensors'
    lines = (path / 'eval' / 'episodes.jsonl').read_text().splitlines()
    assert len(lines) == 9
    record = json.loads(lines[0])
    assert {record[key] for key in ('route_completion', 'collisions', 'lane_invasions')} \
        == {0.5, 0, 2}
    assert len((path / 'eval' / 'evaluations.jsonl').read_text().splitlines()) == 3


# Test if an evaluation driven by two policies, an unknown one or a file from elsewhere keeps
# nothing (the score would belong to no single file of this run).
@pytest.mark.parametrize('policies', [
    ['policy_1.safetensors', 'policy_2.safetensors'], [None, None], ['other.safetensors'] * 2,
    ['../checkpoints/policy_1.safetensors'] * 2, ['policy_1.pt'] * 2])
def test_an_evaluation_of_no_single_known_policy_keeps_nothing(run, policies):
    path, checkpoints = run
    recorder = EvaluationRecorder(path, checkpoints, LOG)
    summary = None
    recorder.begin('ego', policies[0])
    for k, policy in enumerate(policies, start=1):
        summary = recorder.record('ego', EpisodeLabel(str(k), k, 2), end(50.0), policy, {})
    assert summary is not None and not summary['best']
    assert not (path / BEST_POLICY).exists()


# Test if an evaluation cut short (its first episode seen again) starts over.
def test_an_interrupted_evaluation_starts_over(run):
    path, checkpoints = run
    recorder = EvaluationRecorder(path, checkpoints, LOG)
    recorder.begin('ego', 'policy_1.safetensors')
    recorder.record('ego', EpisodeLabel('1', 1, 2), end(-500.0), 'policy_1.safetensors', {})
    summary = evaluate(recorder, [40.0, 60.0], 'policy_1.safetensors', first=2)
    assert summary['episodes'] == 2 and summary['mean_return'] == pytest.approx(50.0)


# Test if evaluation episodes get the policy's own action: no random phase, no noise, and in
# dagger mode no expert takeover; training episodes explore as before.
@pytest.mark.parametrize('mode', ['explore', 'dagger'])
def test_evaluation_episodes_act_without_noise(mode):
    class Constant:
        def act(self, frames, kinematics):
            return np.array([0.25, 0.5], np.float32)

    spec = PolicySpec()
    exploration = ExplorationConfig(mode=mode, learning_starts=2, noise_start=0.5,
                                    noise_end=0.5, beta_start=1.0, beta_end=1.0)
    pipeline = DrivingPipeline(spec, Constant(), exploration)
    image = ImageView('bgra8', 48, 64, 256, np.zeros((48, 64, 4), np.uint8).tobytes())
    route = straight_route()

    def actions(count):
        return [pipeline.step(image, Pose2D(0.0, 0.0, 0.0), 5.0, route).action
                for _ in range(count)]

    pipeline.evaluating = True
    assert all(np.array_equal(a, [0.25, 0.5]) for a in actions(5))
    assert pipeline.exploration_steps == 0  # evaluation frames do not age the exploration
    pipeline.evaluating = False
    assert not any(np.array_equal(a, [0.25, 0.5]) for a in actions(5))


# Test if the evaluated policy is kept even when the trainer pruned its checkpoint meanwhile.
def test_a_policy_pruned_during_its_evaluation_is_still_kept(run):
    path, checkpoints = run
    recorder = EvaluationRecorder(path, checkpoints, LOG)
    recorder.begin('ego', 'policy_2.safetensors')
    (checkpoints / 'policy_2.safetensors').unlink()
    recorder.record('ego', EpisodeLabel('1', 1, 2), end(30.0), 'policy_2.safetensors', {})
    summary = recorder.record('ego', EpisodeLabel('2', 2, 2), end(50.0),
                              'policy_2.safetensors', {})
    assert summary['best']
    assert (path / BEST_POLICY).read_bytes() == bytes([2]) * 16
