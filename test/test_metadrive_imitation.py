"""Tests of the MetaDrive imitation recipe (`learning/metadrive_imitation.py`, no ROS).

The `metadrive` tests run MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes
(scripts/test.sh does): without it they fail, saying so. `-m "not metadrive"` skips them.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import require_metadrive_venv

from av_td3_ros.learning.metadrive_imitation import (
    MetaDriveImitationConfig,
    MetaDriveImitationTrainer,
    label_action,
)
from av_td3_ros.policy.checkpoint import load_policy
from av_td3_ros.sim.metadrive_client import MetaDriveState


# Test if an expert label (steer, throttle, brake) becomes the actor's (steer, accel) action.
@pytest.mark.parametrize('command, action', [((0.3, 0.6, 0.0), (0.3, 0.6)),
                                             ((-0.2, 0.0, 0.8), (-0.2, -0.8)),
                                             ((1.0, 0.0, 0.0), (1.0, 0.0))])
def test_label_action(command, action):
    state = MetaDriveState(image=np.zeros((2, 2, 3), np.uint8), expert=command)
    np.testing.assert_allclose(label_action(state), action, atol=1e-6)


# Test if the recipe's seed ranges stay apart: no validation scenario is collected on.
def test_validation_seeds_are_held_out():
    config = MetaDriveImitationConfig()
    collected = set(range(config.collect_seed_start, config.collect_seed_start + 1000))
    for round_index in range(len(config.dagger_betas)):
        start = config.dagger_seed_start + 1000 * round_index
        collected |= set(range(start, start + 1000))
    assert not collected & set(config.validation_seeds)


# Test if a tiny run collects labelled expert and student frames, validates, and writes a
# camera-profile policy that loads with the MetaDrive expert named in its metadata.
@pytest.mark.metadrive
@pytest.mark.slow
def test_tiny_recipe_writes_a_loadable_policy(tmp_path):
    require_metadrive_venv()
    config = replace(MetaDriveImitationConfig(), camera_width=32, camera_height=32, map='1',
                     max_episode_steps=40, expert_frames=60, bc_updates=6,
                     dagger_frames=30, dagger_updates=4, batch_size=8, validate_every=0,
                     validation_seeds=(44000,), log_every=1000)
    logs = []
    trainer = MetaDriveImitationTrainer(config, log=logs.append)
    try:
        report = trainer.run()
    finally:
        trainer.close()
    assert trainer.dataset.size == 90
    labels = trainer.dataset.labels[:trainer.dataset.size]
    assert np.isfinite(labels).all() and np.abs(labels).max() <= 1.0
    # The expert accelerates away from the start: its labels are not all zero.
    assert np.abs(labels[:, 1]).max() > 0.0
    assert [p['phase'] for p in report.phases] == ['expert data', 'dagger round 1']
    assert report.phases[1]['beta'] == 0.0
    assert len(report.validations) == 2
    assert all('arrivals' in v and 0.0 <= v['route_completion'] <= 100.0
               for v in report.validations)
    path = tmp_path / 'student.safetensors'
    trainer.save(path)
    policy, metadata = load_policy(path)
    assert json.loads(metadata['expert_config'])['expert'] == 'metadrive_expert.YieldingIDM'
    assert json.loads(metadata['imitation_config'])['camera_width'] == 32
    assert policy.config.kinematic_inputs == 'speed'
