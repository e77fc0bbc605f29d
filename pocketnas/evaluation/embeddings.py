"""Verification of a network on insightface `.bin` pair sets."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketnas.data.dataset import load_verification_images
from pocketnas.evaluation.verification import (
    VerificationResult,
    embed_images,
    evaluate_verification,
)


@dataclass(frozen=True)
class VerificationSet:
    """Decoded images and same/different labels of one `.bin` file."""

    name: str
    path: Path
    images: np.ndarray  # (2N, H, W, 3) uint8 RGB
    issame: np.ndarray  # (N,) bool

    @classmethod
    def load(cls, path: str | os.PathLike[str], image_size: int | None = None) -> VerificationSet:
        size = None if image_size is None else (image_size, image_size)
        images, issame = load_verification_images(path, size)
        target = Path(path)
        return cls(name=target.stem, path=target, images=images, issame=issame)


def verify(
    model: nn.Module,
    verification_set: VerificationSet,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> VerificationResult:
    """10-fold verification of `model` on one set, with flipped-image embeddings summed.

    The result's `xnorm` is insightface's XNorm: the mean L2 norm of the embeddings of the
    images and of their flips, each taken on its own before they are summed.
    """
    images = verification_set.images
    plain = embed_images(model, images, batch_size=batch_size, device=device, flip=False)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    flipped = embed_images(model, mirrored, batch_size=batch_size, device=device, flip=False)
    result = evaluate_verification(plain + flipped, verification_set.issame)
    return dataclasses.replace(result, xnorm=mean_norm(plain, flipped))


def mean_norm(*embeddings: np.ndarray) -> float:
    """Return the mean L2 norm of all rows of the given (N, D) arrays."""
    norms = [np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=1) for rows in embeddings]
    return float(np.mean(np.concatenate(norms)))
