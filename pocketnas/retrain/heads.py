"""Margin heads for face-recognition training: ArcFace, CosFace and the combined margin.

All three score class c with s * cos(theta_c), where theta_c is the angle between the embedding
and the class centre, except the true class y, which gets the combined margin of insightface:

    s * (cos(m1 * theta_y + m2) - m3)

ArcFace (Deng et al., 2019) is (m1, m2, m3) = (1, m, 0) and CosFace (Wang et al., 2018) is
(1, 0, m). Once m1 * theta_y + m2 passes pi the cosine would grow again with theta_y, so the
logit falls back to `cos(theta_y) - m2 * sin(m2) - m3`, the standard ArcFace fallback, which keeps
it decreasing in theta_y. With `easy_margin` the angular part is applied only where
cos(theta_y) > 0, and elsewhere the logit is cos(theta_y) - m3.

The logits are computed in float32 even under autocast: the margin arithmetic near cos = +-1
loses too much in bfloat16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("arcface", "cosface", "combined")


class CombinedMarginHead(nn.Module):
    """Normalised class centres and the combined margin logit on each sample's true class."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(
                f"embedding_size and num_classes must be positive, got {embedding_size} and "
                f"{num_classes}"
            )
        if m1 <= 0:
            raise ValueError(f"m1 must be positive, got {m1}")
        self.num_classes = num_classes
        self.s = s
        self.m1, self.m2, self.m3 = m1, m2, m3
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.fallback = m2 * math.sin(m2)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"easy_margin={self.easy_margin}"
        )

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (float32) between each embedding and each class centre."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def check_labels(self, labels: torch.Tensor) -> None:
        """Raise ValueError unless `labels` are integers in 0..num_classes-1.

        On the CPU the check is immediate. On a GPU it is queued with the kernels, so it does not
        stall the training loop, and a bad label fails at the next synchronising call.
        """
        if labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if not labels.numel():
            return
        if labels.device.type == "cpu":
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {low}..{high}")
        else:
            inside = (labels >= 0).all() & (labels < self.num_classes).all()
            torch._assert_async(inside, f"labels must lie in 0..{self.num_classes - 1}")

    def margin_logit(self, target: torch.Tensor) -> torch.Tensor:
        """Return the true class's logit before scaling, from its cosine `target` (float32)."""
        if self.m1 == 1.0 and self.m2 == 0.0:
            return target - self.m3
        # The sine floor keeps the gradients finite where the cosine is exactly +-1.
        sine = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
        if self.m1 == 1.0:
            # cos(theta + m2) by the angle-sum identity, without an inverse cosine.
            with_margin = target * math.cos(self.m2) - sine * math.sin(self.m2) - self.m3
            past_pi = target < math.cos(math.pi - self.m2)
        else:
            angle = self.m1 * torch.atan2(sine, target) + self.m2
            with_margin = torch.cos(angle) - self.m3
            past_pi = angle > math.pi
        if self.easy_margin:
            return torch.where(target > 0, with_margin, target - self.m3)
        return torch.where(past_pi, target - self.fallback - self.m3, with_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the scaled float32 logits with the margin on each sample's true class."""
        self.check_labels(labels)
        cosine = self.cosine(embeddings).clamp(-1.0, 1.0)
        index = labels.long().view(-1, 1)
        target = cosine.gather(1, index)
        logits = cosine.scatter(1, index, self.margin_logit(target))
        return logits * self.s


class ArcFace(CombinedMarginHead):
    """Additive angular margin: s * cos(theta_y + m)."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, 1.0, m, 0.0, easy_margin)
        self.m = m


class CosFace(CombinedMarginHead):
    """Additive cosine margin: s * (cos(theta_y) - m)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_size, num_classes, s, 1.0, 0.0, m)
        self.m = m


def build_head(
    kind: str,
    embedding_size: int,
    num_classes: int,
    s: float,
    m: float,
    combined: tuple[float, float, float] = (1.0, 0.5, 0.0),
    easy_margin: bool = False,
) -> CombinedMarginHead:
    """Build a margin head by name: 'arcface' and 'cosface' use margin `m`, 'combined' uses
    `combined` = (m1, m2, m3)."""
    if kind == "arcface":
        return ArcFace(embedding_size, num_classes, s, m, easy_margin)
    if kind == "cosface":
        return CosFace(embedding_size, num_classes, s, m)
    if kind == "combined":
        m1, m2, m3 = combined
        return CombinedMarginHead(embedding_size, num_classes, s, m1, m2, m3, easy_margin)
    raise ValueError(f"unknown head {kind!r}; valid heads: {', '.join(HEADS)}")
