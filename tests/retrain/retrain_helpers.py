"""A tiny retraining configuration for the training tests."""

from __future__ import annotations

import dataclasses

from pocketnas.config import RetrainConfig

TINY = RetrainConfig(
    channels=4,
    layers=4,
    embedding_size=16,
    image_size=32,
    epochs=3,
    batch_size=8,
    lr=0.1,
    lr_reference_batch=8,
    milestones=[2],
    margin_s=16.0,
    margin_m=0.3,
    steps_per_epoch=4,
    log_every_steps=2,
    workers=0,
)


def tiny_config(**changes: object) -> RetrainConfig:
    """The tiny retraining configuration with `changes` applied."""
    return dataclasses.replace(TINY, **changes)  # type: ignore[arg-type]
