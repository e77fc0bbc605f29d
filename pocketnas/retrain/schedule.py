"""Learning-rate schedules of retraining, as functions of the fractional epoch.

The learning rate is a pure function of training progress, so a resumed run needs no scheduler
state beyond its step count. PocketNet's schedule (`step`) divides the rate by 10 at milestone
epochs; `cosine` anneals it to `lr_min` times the base rate. Both may start with a linear warm-up
from zero.
"""

from __future__ import annotations

import math

from pocketnas.config import RetrainConfig


def lr_factor(config: RetrainConfig, progress: float) -> float:
    """Multiplier of the base learning rate after `progress` epochs (fractional)."""
    warmup = config.warmup_epochs
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if config.schedule == "cosine":
        span = max(config.epochs - warmup, 1e-12)
        done = min(max((progress - warmup) / span, 0.0), 1.0)
        return config.lr_min + (1.0 - config.lr_min) * 0.5 * (1.0 + math.cos(math.pi * done))
    passed = sum(1 for milestone in config.milestones if progress >= milestone)
    return float(config.lr_gamma**passed)


def base_learning_rate(config: RetrainConfig, world_size: int) -> float:
    """Return the peak learning rate: `lr` scaled by the global batch over `lr_reference_batch`."""
    return config.lr * config.batch_size * world_size / config.lr_reference_batch
