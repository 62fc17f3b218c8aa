"""Tests of the hot-reload component the driver node and bag_eval share (no rclpy)."""
import threading

import numpy as np
import pytest
import torch
from helpers import camera_frame

from av_td3_ros.driving.decision import Reason
from av_td3_ros.driving.hot_reload import PolicyReloader, Poll, random_policy
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.policy.checkpoint import CheckpointError, PolicySpec, policy_path, save_policy
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.inference import PolicyRunner
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

SPEC = PolicySpec()
CPU = torch.device('cpu')


def write_policy(path, seed, spec=SPEC, step=None):
    torch.manual_seed(seed)
    save_policy(path, ActorPolicy(spec.network), spec,
                None if step is None else {'step': str(step)})
    return path


def make_runner(policy):
    return PolicyRunner(policy, CPU)


def frame(index=0):
    return camera_frame(index, height=30, width=40)


class Events:
    """Collect the reloader's callbacks (they run on its loading thread)."""

    def __init__(self):
        self.ready, self.refused = [], []

    def reloader(self, checkpoint):
        """Return a reloader of `checkpoint` that reports here."""
        return PolicyReloader(SPEC, make_runner, checkpoint, on_ready=self.ready.append,
                              on_refused=self.refused.append)


def poll_and_wait(reloader):
    outcome = reloader.poll()
    assert reloader.wait(timeout=60.0)
    return outcome


# Test if a missing checkpoint is reported until one is found, and only then.
def test_missing_checkpoint(tmp_path):
    events = Events()
    reloader = events.reloader(tmp_path / 'policies')
    assert reloader.poll() is Poll.MISSING
    (tmp_path / 'policies').mkdir()
    assert reloader.poll() is Poll.MISSING  # an empty directory: still nothing to drive with
    write_policy(policy_path(tmp_path / 'policies', 1), seed=1)
    assert poll_and_wait(reloader) is Poll.LOADING
    policy_path(tmp_path / 'policies', 1).unlink()
    assert reloader.poll() is Poll.UNCHANGED  # one was found: gone now, but keep driving
    assert PolicyReloader(SPEC, make_runner, None).poll() is Poll.MISSING


# Test if each newer file of a directory is loaded on a worker once, then handed over once.
def test_new_file_in_a_directory_is_picked_up(tmp_path):
    events = Events()
    reloader = events.reloader(tmp_path)
    write_policy(policy_path(tmp_path, 1), seed=1, step=1)
    assert poll_and_wait(reloader) is Poll.LOADING
    assert [loaded.description for loaded in events.ready] == \
        [f'{policy_path(tmp_path, 1).name} (step 1)']
    first = reloader.take()
    assert first is events.ready[0] and reloader.take() is None
    assert reloader.poll() is Poll.UNCHANGED
    write_policy(policy_path(tmp_path, 2), seed=2, step=2)
    assert poll_and_wait(reloader) is Poll.LOADING
    second = reloader.take()
    assert second.path == policy_path(tmp_path, 2) and second.step == '2'
    assert not torch.equal(first.runner.policy.actor.fc3.bias,
                           second.runner.policy.actor.fc3.bias)
    assert events.refused == [] and reloader.failure is None


# Test if blocking polls load in the caller's thread (the driver's first policy, bag_eval).
def test_blocking_poll_loads_at_once(tmp_path):
    path = write_policy(tmp_path / 'policy.safetensors', seed=4)
    reloader = PolicyReloader(SPEC, make_runner, path)
    assert reloader.poll(block=True) is Poll.LOADED
    assert reloader.take().path == path
    assert reloader.poll(block=True) is Poll.UNCHANGED


# Test if bad files are refused naming the file, the old policy stays, and good ones follow.
@pytest.mark.parametrize('case', ['other spec', 'not a checkpoint', 'NaN weights'])
def test_bad_file_is_refused_and_the_old_policy_kept(tmp_path, case):
    events = Events()
    reloader = events.reloader(tmp_path)
    write_policy(policy_path(tmp_path, 1), seed=1)
    poll_and_wait(reloader)
    pipeline = DrivingPipeline(SPEC, reloader.take().runner)
    old_runner = pipeline.runner
    bad = policy_path(tmp_path, 2)
    if case == 'other spec':
        write_policy(bad, seed=2, spec=PolicySpec(network=NetworkConfig(activation='relu')))
    elif case == 'not a checkpoint':
        bad.write_bytes(b'not a safetensors file')
    else:
        torch.manual_seed(2)
        policy = ActorPolicy(SPEC.network)
        with torch.no_grad():
            policy.actor.fc3.bias.fill_(float('nan'))
        save_policy(bad, policy, SPEC)
    assert poll_and_wait(reloader) is Poll.LOADING
    assert reloader.take() is None and len(events.ready) == 1
    (failure,) = events.refused
    assert failure is reloader.failure and failure.path == bad and bad.name in failure.text
    if case == 'other spec':
        assert isinstance(failure.error, CheckpointError) and 'activation' in failure.text
    # The driver keeps its policy: the reloader never touches the pipeline's runner.
    assert pipeline.runner is old_runner
    assert pipeline.step(frame(), Pose2D(0.0, 0.0, 0.0), 1.0, None).reason is Reason.POLICY
    assert reloader.poll() is Poll.UNCHANGED  # not retried until the file changes
    write_policy(policy_path(tmp_path, 3), seed=3)
    poll_and_wait(reloader)
    assert reloader.take().path == policy_path(tmp_path, 3) and reloader.failure is None


# Test if a policy loaded while a frame runs is not used by that frame, only after take().
def test_no_swap_during_a_frame(tmp_path):
    entered, release = threading.Event(), threading.Event()

    class SlowRunner:
        def act(self, frames, kinematics):
            entered.set()
            assert release.wait(60.0)
            return np.array([0.5, 0.25], np.float32)

    reloader = PolicyReloader(SPEC, make_runner, tmp_path)
    pipeline = DrivingPipeline(SPEC, SlowRunner())
    results = []
    worker = threading.Thread(target=lambda: results.append(
        pipeline.step(frame(), Pose2D(0.0, 0.0, 0.0), 1.0, None)))
    worker.start()
    assert entered.wait(60.0)
    write_policy(policy_path(tmp_path, 1), seed=1)
    poll_and_wait(reloader)  # loaded while the frame is inside the old policy
    assert isinstance(pipeline.runner, SlowRunner)
    release.set()
    worker.join(60.0)
    np.testing.assert_array_equal(results[0].action, [0.5, 0.25])  # the old policy's action
    loaded = reloader.take()  # between frames, as DriverNode.on_image does
    pipeline.set_runner(loaded.runner)
    result = pipeline.step(frame(), Pose2D(0.0, 0.0, 0.0), 1.0, None)
    expected = loaded.runner.act(pipeline.stack.frames, pipeline.kinematics)  # same input
    np.testing.assert_array_equal(result.action, expected)


# Test if the random policy is the seed's, the same one in the node and in bag_eval.
def test_random_policy_is_seeded():
    first, second = random_policy(SPEC, 5), random_policy(SPEC, 5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 second.state_dict().values(), strict=True))
