from __future__ import annotations

import math

import pytest
import torch

from pocketnas.retrain.heads import ArcFace


def _head_with_centres(centres: torch.Tensor, s: float, m: float, easy: bool = False) -> ArcFace:
    head = ArcFace(centres.shape[1], centres.shape[0], s=s, m=m, easy_margin=easy)
    with torch.no_grad():
        head.weight.copy_(centres)
    return head


def test_margin_logit_matches_hand_derivation():
    # Class centres along the axes; the embedding makes 30 degrees with class 0, 60 with class 1.
    centres = torch.eye(2)
    angle = math.radians(30)
    embedding = torch.tensor([[math.cos(angle), math.sin(angle)]]) * 3.0  # norm does not matter
    head = _head_with_centres(centres, s=10.0, m=0.5)
    logits = head(embedding, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10.0 * math.cos(angle + 0.5), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10.0 * math.cos(math.radians(60)), abs=1e-5)


def test_fallback_past_pi():
    # theta = 170 degrees: theta + m passes pi, so the logit is cos(theta) - m * sin(m).
    centres = torch.eye(2)
    theta = math.radians(170)
    embedding = torch.tensor([[math.cos(theta), math.sin(theta)]])
    head = _head_with_centres(centres, s=1.0, m=0.5)
    logits = head(embedding, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - 0.5 * math.sin(0.5), abs=1e-5)


def test_easy_margin_leaves_obtuse_angles():
    centres = torch.eye(2)
    theta = math.radians(120)
    embedding = torch.tensor([[math.cos(theta), math.sin(theta)]])
    head = _head_with_centres(centres, s=1.0, m=0.5, easy=True)
    assert head(embedding, torch.tensor([0]))[0, 0].item() == pytest.approx(
        math.cos(theta), abs=1e-5
    )


def test_labels_validated():
    head = ArcFace(4, 3)
    embeddings = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        head(embeddings, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        head(embeddings, torch.tensor([0.0, 1.0]))
