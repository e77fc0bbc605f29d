"""Margin heads for face-recognition training.

`ArcFace` (Deng et al., 2019) scores class c with s * cos(theta_c) for every class but the true one,
which gets s * cos(theta_y + m). Past theta_y + m > pi the cosine would grow again, so the standard
fallback `cos(theta_y) - m * sin(m)` keeps the logit decreasing in theta (or, with `easy_margin`,
the margin is applied only where cos(theta_y) > 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ArcFace(nn.Module):
    """Additive angular margin head: a normalised class-centre matrix plus the margin logit."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.s = s
        self.m = m
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.cos_m = math.cos(m)
        self.sin_m = math.sin(m)
        self.threshold = math.cos(math.pi - m)
        self.fallback = math.sin(math.pi - m) * m

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity between each embedding and each class centre."""
        return F.linear(F.normalize(embeddings), F.normalize(self.weight))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scaled logits with the margin on each sample's true class."""
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        cosine = self.cosine(embeddings).clamp(-1.0, 1.0)
        target = cosine.gather(1, labels.view(-1, 1))
        sine = torch.sqrt((1.0 - target * target).clamp_min(0.0))
        with_margin = target * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            with_margin = torch.where(target > 0, with_margin, target)
        else:
            with_margin = torch.where(target > self.threshold, with_margin, target - self.fallback)
        logits = cosine.scatter(1, labels.view(-1, 1), with_margin)
        return logits * self.s
