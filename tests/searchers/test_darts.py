from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pocketnas.search_space.networks import SearchNetwork
from pocketnas.searchers.darts import Architect


def _tiny_net(seed: int = 0, fused: bool = True) -> SearchNetwork:
    torch.manual_seed(seed)
    net = SearchNetwork(
        num_classes=3, channels=4, layers=4, nodes=2, embedding_size=8, image_size=16, fused=fused
    )
    net = net.double()
    # BatchNorm in training mode makes the loss depend on the batch; eval mode keeps the
    # finite-difference check exact.
    net.eval()
    return net


def _batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    train = (
        torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64),
        torch.tensor([0, 1, 2, 0]),
    )
    val = (torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64), torch.tensor([1, 2, 0, 1]))
    return train, val


def test_hessian_vector_product_matches_autograd():
    net = _tiny_net()
    train, _ = _batches()
    # A step far below DARTS' 0.01 makes the central difference exact to rounding error.
    architect = Architect(
        net, torch.optim.Adam(net.alphas(), lr=1e-3), order="second", hessian_step=1e-4
    )
    vector = [torch.randn_like(w) for w in net.weights()]
    approx = architect.hessian_vector_product(vector, train)

    loss = F.cross_entropy(net(train[0]), train[1])
    grad_w = torch.autograd.grad(loss, net.weights(), create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grad_w, vector))
    exact = torch.autograd.grad(dot, net.alphas())
    for a, e in zip(approx, exact):
        assert torch.allclose(a, e, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_second_order_gradient_matches_finite_differences(fused):
    """The unrolled gradient equals d L_val(w - xi * dL_train/dw(alpha), alpha) / d alpha."""
    net = _tiny_net(fused=fused)
    train, val = _batches()
    xi = 0.05
    # Pooling and PReLU make the loss piecewise smooth. Steps far below DARTS' 0.01 keep both
    # finite differences on one smooth piece, so the check is exact to rounding error.
    architect = Architect(
        net, torch.optim.Adam(net.alphas(), lr=1e-3), "second", 0.0, 0.0, hessian_step=1e-7
    )
    _, _, grads = architect.unrolled_gradient(train, val, xi, None)

    def unrolled_val_loss(alpha_normal: torch.Tensor) -> float:
        probe = copy.deepcopy(net)
        with torch.no_grad():
            probe.alpha_normal.copy_(alpha_normal)
        loss = F.cross_entropy(probe(train[0]), train[1])
        g = torch.autograd.grad(loss, probe.weights())
        with torch.no_grad():
            for w, gw in zip(probe.weights(), g):
                w.sub_(xi * gw)
            return float(F.cross_entropy(probe(val[0]), val[1]))

    base = net.alpha_normal.detach().clone()
    h = 1e-6
    for index in [(0, 1), (2, 5), (4, 7)]:
        plus, minus = base.clone(), base.clone()
        plus[index] += h
        minus[index] -= h
        numeric = (unrolled_val_loss(plus) - unrolled_val_loss(minus)) / (2 * h)
        assert grads[0][index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-10)


def test_first_order_step_moves_alphas_only():
    net = _tiny_net().float()
    net.train()
    train, val = _batches()
    train = (train[0].float(), train[1])
    val = (val[0].float(), val[1])
    weights_before = [w.detach().clone() for w in net.weights()]
    alphas_before = [a.detach().clone() for a in net.alphas()]
    architect = Architect(net, torch.optim.Adam(net.alphas(), lr=1e-2), order="first")
    architect.step(train, val, xi=0.1)
    assert any(not torch.equal(a, b) for a, b in zip(net.alphas(), alphas_before))
    assert all(torch.equal(w, b) for w, b in zip(net.weights(), weights_before))


def _step_pair(arch_gradient: str, order: str = "second"):
    net = _tiny_net()
    alpha_optimizer = torch.optim.SGD(net.alphas(), lr=1.0)
    w_optimizer = torch.optim.SGD(net.weights(), lr=0.1)
    architect = Architect(
        net, alpha_optimizer, order, 0.0, 0.0, hessian_step=1e-7, arch_gradient=arch_gradient
    )
    return net, architect, w_optimizer


@pytest.mark.parametrize("order", ["first", "second"])
def test_authors_mode_adds_training_alpha_gradient(order):
    train, val = _batches()
    net, architect, w_optimizer = _step_pair("darts", order)
    start = [a.detach().clone() for a in net.alphas()]
    loss = F.cross_entropy(net(train[0]), train[1])
    train_alpha_grads = torch.autograd.grad(loss, net.alphas())
    architect.search_step(train, val, xi=0.1, w_optimizer=w_optimizer, grad_clip=None)
    darts_alphas = [a.detach().clone() for a in net.alphas()]

    net, architect, w_optimizer = _step_pair("authors", order)
    architect.search_step(train, val, xi=0.1, w_optimizer=w_optimizer, grad_clip=None)
    for before, darts, authors, leak in zip(
        start, darts_alphas, net.alphas(), train_alpha_grads, strict=True
    ):
        assert not torch.equal(darts, before)
        torch.testing.assert_close(darts - authors, leak, rtol=1e-6, atol=1e-12)


def test_search_step_weights_follow_start_gradient():
    train, val = _batches()
    net, architect, w_optimizer = _step_pair("darts")
    weights = [w.detach().clone() for w in net.weights()]
    loss = F.cross_entropy(net(train[0]), train[1])
    grads = torch.autograd.grad(loss, net.weights())
    architect.search_step(train, val, xi=0.1, w_optimizer=w_optimizer, grad_clip=None)
    for after, before, grad in zip(net.weights(), weights, grads, strict=True):
        torch.testing.assert_close(after.detach(), before - 0.1 * grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("order", "passes"), [("first", 2), ("second", 4)])
def test_search_step_forward_passes(order, passes):
    """One training pass serves the unrolled step and the weight update."""
    train, val = _batches()
    net, architect, w_optimizer = _step_pair("darts", order)
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append(1))
    architect.search_step(train, val, xi=0.1, w_optimizer=w_optimizer, grad_clip=5.0)
    # First order: training and validation batch. Second order: training batch, validation batch
    # through the unrolled copy (which copies the hook too), and two Hessian-vector passes.
    assert len(calls) == passes
