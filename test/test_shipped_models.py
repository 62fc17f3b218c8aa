"""Test the shipped models' files: size, format, and a model card with the command behind each."""
from pathlib import Path

import pytest

from av_td3_ros.policy.checkpoint import load_policy

MODELS = Path(__file__).resolve().parents[1] / 'models'
WEIGHTS = sorted(MODELS.glob('*.safetensors'))


# Test if every shipped policy is a loadable safetensors file of at most 8 MB whose model card
# names the one command that regenerates it.
@pytest.mark.parametrize('path', WEIGHTS, ids=[p.name for p in WEIGHTS])
def test_shipped_model_has_a_card_and_fits(path):
    assert path.stat().st_size <= 8 * 1024 * 1024
    load_policy(path)
    card = path.with_suffix('.md').read_text()
    assert f'--out models/{path.name}' in card
    assert 'train_imitation' in card


# Test if the models folder ships policies at all (the parametrised test would pass on none).
def test_models_are_shipped():
    assert {p.name for p in WEIGHTS} >= {'camera_policy.safetensors',
                                         'metadrive_camera_policy.safetensors'}
