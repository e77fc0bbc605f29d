from __future__ import annotations

import itertools
import math

import pytest

from pocketnas.config import RetrainConfig, load_preset
from pocketnas.errors import ConfigError
from pocketnas.retrain.schedule import base_learning_rate, lr_factor


def test_step_schedule_milestones():
    config = RetrainConfig()  # PocketNet: milestones 8, 14, 20, 25
    expected = {0: 1.0, 7.99: 1.0, 8: 0.1, 13.5: 0.1, 14: 0.01, 20: 1e-3, 25: 1e-4, 25.9: 1e-4}
    for progress, factor in expected.items():
        assert lr_factor(config, progress) == pytest.approx(factor)


def test_lr_scales_with_global_batch():
    config = load_preset(RetrainConfig, "pocketnet-s128")
    # 128 images per GPU on 4 GPUs is the paper's global batch of 512: lr 0.1.
    assert base_learning_rate(config, world_size=4) == pytest.approx(0.1)
    assert base_learning_rate(config, world_size=1) == pytest.approx(0.025)


def test_warmup_is_linear_from_zero():
    config = RetrainConfig(warmup_epochs=2.0)
    assert lr_factor(config, 0.0) == 0.0
    assert lr_factor(config, 0.5) == pytest.approx(0.25)
    assert lr_factor(config, 2.0) == 1.0


def test_cosine_anneals_to_lr_min():
    config = RetrainConfig(schedule="cosine", epochs=10, warmup_epochs=1.0, lr_min=0.01)
    assert lr_factor(config, 1.0) == pytest.approx(1.0)
    middle = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert lr_factor(config, 5.5) == pytest.approx(middle)
    assert lr_factor(config, 10.0) == pytest.approx(0.01)
    values = [lr_factor(config, 1 + 9 * i / 50) for i in range(51)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": "linear"}, "schedule must be one of step, cosine"),
        ({"head": "sphereface"}, "head must be one of arcface, cosface, combined"),
        ({"kd": "template"}, "needs a teacher"),
        ({"arch": "iresnet100", "image_size": 100}, "divisible by 16"),
        ({"warmup_epochs": 30.0}, "warmup_epochs must lie in"),
        ({"eval_every_steps": 0}, "eval_every_steps must be a positive integer"),
        ({"combined_margins": [1.0, 0.5]}, "combined_margins must be"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"device": "tpu"}, "device must be auto, cpu or cuda"),
    ],
)
def test_invalid_settings_named(changes: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        RetrainConfig(**changes).validate()
