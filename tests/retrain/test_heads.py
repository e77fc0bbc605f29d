from __future__ import annotations

import math

import pytest
import torch

from pocketnas.retrain.heads import ArcFace, CombinedMarginHead, CosFace, build_head


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


def _slow_logits(
    embeddings: torch.Tensor,
    centres: torch.Tensor,
    labels: list[int],
    s: float,
    margins: tuple[float, float, float],
    easy: bool = False,
) -> list[list[float]]:
    """The combined-margin logits, one number at a time in float64 Python arithmetic."""
    m1, m2, m3 = margins
    rows = []
    for embedding, label in zip(embeddings.double().tolist(), labels, strict=True):
        row = []
        for index, centre in enumerate(centres.double().tolist()):
            dot = sum(a * b for a, b in zip(embedding, centre, strict=True))
            norms = math.sqrt(sum(a * a for a in embedding)) * math.sqrt(sum(b * b for b in centre))
            cosine = max(-1.0, min(1.0, dot / norms))
            if index == label:
                angle = m1 * math.acos(cosine) + m2
                if easy and cosine <= 0:
                    cosine = cosine - m3
                elif angle <= math.pi:
                    cosine = math.cos(angle) - m3
                else:
                    cosine = cosine - m2 * math.sin(m2) - m3
            row.append(s * cosine)
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("kind", "margins", "easy"),
    [
        ("arcface", (1.0, 0.5, 0.0), False),
        ("arcface", (1.0, 0.5, 0.0), True),
        ("cosface", (1.0, 0.0, 0.35), False),
        ("combined", (1.0, 0.3, 0.2), False),
        ("combined", (0.9, 0.4, 0.15), False),
        ("combined", (1.2, 0.3, 0.1), True),
    ],
)
def test_heads_match_slow_reference(kind: str, margins: tuple[float, float, float], easy: bool):
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(24, 6, generator=generator)
    labels = torch.randint(0, 7, (24,), generator=generator)
    # Put some embeddings near and opposite their class centre, so every branch is reached. (At
    # the centre itself float32 rounding of the cosine moves theta by about 3e-4.)
    m = margins[2] if kind == "cosface" else margins[1]
    head = build_head(kind, 6, 7, 12.0, m, margins, easy)
    embeddings[:4] = head.weight.detach()[labels[:4]] + 0.002
    embeddings[4:8] = -head.weight.detach()[labels[4:8]] + 0.01
    expected = _slow_logits(embeddings, head.weight.detach(), labels.tolist(), 12.0, margins, easy)
    got = head(embeddings, labels)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=2e-4)


def test_arcface_cosface_as_combined():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(10, 8, generator=generator)
    labels = torch.randint(0, 5, (10,), generator=generator)
    arcface, combined = ArcFace(8, 5, s=30.0, m=0.4), CombinedMarginHead(8, 5, 30.0, 1.0, 0.4, 0.0)
    cosface, cosine_combined = (
        CosFace(8, 5, s=30.0, m=0.3),
        CombinedMarginHead(8, 5, 30.0, 1, 0, 0.3),
    )
    for left, right in ((arcface, combined), (cosface, cosine_combined)):
        right.load_state_dict(left.state_dict())
        assert torch.allclose(left(embeddings, labels), right(embeddings, labels), atol=1e-5)


def test_margin_gradient_finite_at_centre():
    head = ArcFace(4, 3, s=8.0, m=0.5)
    embeddings = head.weight.detach()[:2].clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(
        head(embeddings, torch.tensor([0, 1])), torch.tensor([0, 1])
    )
    loss.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


def test_logits_float32_under_autocast():
    head = ArcFace(8, 5)
    embeddings = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3])
    reference = head(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(embeddings.bfloat16(), labels)
    assert got.dtype == torch.float32
    # Only the bfloat16 rounding of the embeddings differs.
    assert torch.allclose(got, reference, atol=0.5)


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="valid heads: arcface, cosface, combined"):
        build_head("sphereface", 4, 3, 64.0, 0.5)
