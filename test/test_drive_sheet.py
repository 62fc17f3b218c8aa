"""Tests of tools/drive_sheet.py: the drawing and tiling (pure), and one short real episode.

The `metadrive` test runs MetaDrive in the venv `bash scripts/setup.sh --metadrive` makes
(scripts/test.sh does): without it, it fails, saying so. `-m "not metadrive"` skips it.
"""
import re

import cv2
import numpy as np
import pytest
import torch
from helpers import require_metadrive_venv

from av_td3_ros.policy.checkpoint import PolicySpec, save_policy_state
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.tools import drive_sheet
from av_td3_ros.tools.drive_sheet import (
    BRAKE_COLOUR,
    STEER_COLOUR,
    THROTTLE_COLOUR,
    Frame,
    annotate,
    contact_sheet,
    pick,
)

GREY = np.full((84, 84, 3), 128, np.uint8)


def pixels_of(image, colour):
    """Return the (rows, columns) where `image` has exactly `colour`."""
    return np.nonzero(np.all(image == colour, axis=2))


# Test if a frame is upscaled three times and the steer bar grows from the centre towards
# the side it steers to (right of centre for positive steer, as CARLA's).
def test_steer_bar_follows_the_steer():
    left = annotate(Frame(GREY, -0.8, 0.0, 0.0, 7))
    right = annotate(Frame(GREY, 0.8, 0.0, 0.0, 7))
    straight = annotate(Frame(GREY, 0.0, 0.0, 0.0, 7))
    assert left.shape == right.shape == (252, 252, 3)
    centre = (252 - 8) // 2
    left_rows, left_cols = pixels_of(left, STEER_COLOUR)
    right_rows, right_cols = pixels_of(right, STEER_COLOUR)
    assert left_rows.min() >= 252 - 8 and right_rows.min() >= 252 - 8
    assert left_cols.max() <= centre and left_cols.min() < centre - 80
    assert right_cols.min() >= centre and right_cols.max() > centre + 80
    assert pixels_of(straight, STEER_COLOUR)[0].size == 0


# Test if throttle fills the pedal bar upwards from the middle, brake downwards, in
# proportion to the command.
def test_pedal_bar_follows_throttle_and_brake():
    full = annotate(Frame(GREY, 0.0, 1.0, 0.0, 0))
    half = annotate(Frame(GREY, 0.0, 0.5, 0.0, 0))
    braking = annotate(Frame(GREY, 0.0, 0.0, 1.0, 0))
    full_rows, full_cols = pixels_of(full, THROTTLE_COLOUR)
    half_rows, _ = pixels_of(half, THROTTLE_COLOUR)
    brake_rows, _ = pixels_of(braking, BRAKE_COLOUR)
    assert full_cols.min() >= 252 - 8
    assert full_rows.max() <= 126 and full_rows.min() < 10
    assert half_rows.min() == pytest.approx(126 - 62, abs=2)
    assert brake_rows.min() >= 126 and brake_rows.max() > 240
    assert pixels_of(full, BRAKE_COLOUR)[0].size == 0
    assert pixels_of(braking, THROTTLE_COLOUR)[0].size == 0


# Test if the sheet tiles the frames row by row under a title strip, and pick spreads the
# tiles over the whole episode, first and last step included.
def test_contact_sheet_layout_and_pick():
    frames = [Frame(np.full((84, 84, 3), 10 * i, np.uint8), 0.0, 0.0, 0.0, i) for i in range(6)]
    sheet = contact_sheet(frames, columns=4, title='seed 1')
    assert sheet.shape == (24 + 2 * 252 + 2, 4 * 252 + 3 * 2, 3)
    # The sixth frame is the second tile of the second row.
    assert np.array_equal(sheet[24 + 254 + 100, 254 + 100], [50, 50, 50])
    assert pick(100, 16)[0] == 0 and pick(100, 16)[-1] == 99 and len(pick(100, 16)) == 16
    assert pick(5, 16) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        contact_sheet([])


# Test if the tool drives a short episode with a random speed+camera policy and writes a
# small PNG of 4 columns of 252x252 tiles, printing the episode's line.
@pytest.mark.metadrive
@pytest.mark.slow
def test_drive_sheet_writes_a_small_png(tmp_path, capsys):
    require_metadrive_venv()
    torch.manual_seed(0)
    spec = PolicySpec(network=NetworkConfig(kinematic_inputs='speed',
                                            feature_norm='layernorm_tanh'))
    checkpoint = tmp_path / 'random.safetensors'
    save_policy_state(checkpoint, ActorPolicy(spec.network).state_dict(), spec)
    out = tmp_path / 'sheet.png'
    assert drive_sheet.main(['--checkpoint', str(checkpoint), '--seed', '5', '--map', '1',
                             '--max-steps', '20', '--out', str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    steps = int(re.match(r'^seed 5: .*, (\d+) steps$', lines[0]).group(1))
    assert 0 < steps <= 20
    sheet = cv2.imread(str(out))
    assert sheet.shape[1] == 4 * 252 + 3 * 2
    assert out.stat().st_size < 300 * 1024
