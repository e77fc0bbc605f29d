"""The fused search cell computes the same function as the per-edge DARTS cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketnas.search_space.cells import MixedOp
from pocketnas.search_space.fused import FusedSearchCell
from pocketnas.search_space.networks import SearchNetwork
from pocketnas.search_space.operations import PRIMITIVES, Zero


def _pair(primitives: tuple[str, ...] = PRIMITIVES, nodes: int = 4):
    """A per-edge supernet and a fused supernet with identical weights, in float64."""
    torch.manual_seed(0)
    options = {
        "num_classes": 5,
        "channels": 4,
        "layers": 4,
        "nodes": nodes,
        "embedding_size": 8,
        "image_size": 32,
        "primitives": primitives,
    }
    reference = SearchNetwork(**options, fused=False).double()
    fused = SearchNetwork(**options, fused=True).double()
    fused.stem.load_state_dict(reference.stem.state_dict())
    fused.tail.load_state_dict(reference.tail.state_dict())
    fused.classifier.load_state_dict(reference.classifier.state_dict())
    with torch.no_grad():
        for alpha in reference.alphas():
            alpha.normal_()
        for target, source in zip(fused.alphas(), reference.alphas(), strict=True):
            target.copy_(source)
    for index, cell in enumerate(reference.cells):
        fused.cells[index] = FusedSearchCell.from_search_cell(cell, reference.primitives).double()
    return reference, fused


def _loss_and_alpha_grads(net: SearchNetwork, images: torch.Tensor, labels: torch.Tensor):
    loss = F.cross_entropy(net(images), labels)
    return loss, torch.autograd.grad(loss, net.alphas())


def test_fused_has_same_parameter_count():
    reference, fused = _pair()
    assert sum(p.numel() for p in fused.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )


@pytest.mark.parametrize(
    "primitives",
    [
        PRIMITIVES,
        ("none", "skip_connect"),
        ("max_pool_3x3", "dw_conv_3x3"),
        ("avg_pool_3x3", "dw_conv_1x1", "dw_conv_7x7"),
    ],
)
def test_fused_matches_per_edge_in_training(primitives):
    reference, fused = _pair(primitives)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4])
    loss_ref, grads_ref = _loss_and_alpha_grads(reference, images, labels)
    loss_fused, grads_fused = _loss_and_alpha_grads(fused, images, labels)
    assert loss_fused.item() == pytest.approx(loss_ref.item(), abs=1e-12)
    for expected, actual in zip(grads_ref, grads_fused, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_fused_matches_per_edge_in_eval():
    reference, fused = _pair()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    # One training pass moves the BatchNorm statistics; eval mode then reads them.
    reference(images)
    fused(images)
    reference.eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(images), reference(images), rtol=1e-9, atol=1e-12)


def test_fused_input_gradient_matches():
    reference, fused = _pair(nodes=2)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    grad_ref = torch.autograd.grad(reference(images).sum(), images)[0]
    grad_fused = torch.autograd.grad(fused(images).sum(), images)[0]
    torch.testing.assert_close(grad_fused, grad_ref, rtol=1e-9, atol=1e-12)


def test_mixed_op_is_softmax_weighted_sum():
    torch.manual_seed(0)
    op = MixedOp(4, 1, PRIMITIVES).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    alpha = torch.randn(len(PRIMITIVES), dtype=torch.float64)
    weights = F.softmax(alpha, dim=-1)
    expected = torch.zeros_like(x)
    for weight, candidate in zip(weights, op.ops, strict=True):
        expected = expected + weight * candidate(x)
    torch.testing.assert_close(op(x, weights), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(op.ops[PRIMITIVES.index("none")], Zero)


def test_supernet_rows_are_softmax():
    net = SearchNetwork(5, channels=4, layers=4, nodes=3, embedding_size=8, image_size=32)
    rows = net._split(net.alpha_normal)
    assert [len(r) for r in rows] == [2, 3, 4]
    stacked = torch.cat(rows)
    torch.testing.assert_close(stacked, F.softmax(net.alpha_normal, dim=-1))
    torch.testing.assert_close(stacked.sum(-1), torch.ones(len(stacked)))


def test_none_only_cell_outputs_zeros():
    _, fused = _pair(("none",))
    cell = fused.cells[0]
    s = torch.randn(2, cell.preproc0.net[0].weight.numel(), 8, 8, dtype=torch.float64)
    weights = [torch.ones(node + 2, 1, dtype=torch.float64) for node in range(cell.nodes)]
    out = cell(s, s, weights)
    assert out.shape == (2, cell.out_channels, 8, 8)
    assert torch.count_nonzero(out) == 0
