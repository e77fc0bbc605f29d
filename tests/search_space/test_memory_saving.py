"""Operations and networks that rebuild activations compute what their plain layers compute.

The reference for each module is a deep copy whose depthwise-separable operations run their
`nn.Sequential` directly, whose PReLUs run `nn.PReLU.forward` and whose fixed cells sum their
edges out of place. So it keeps every activation and uses only PyTorch's own backward formulas.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from pocketnas.search_space import networks, operations
from pocketnas.search_space.activations import PReLU
from pocketnas.search_space.cells import FixedCell
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import FaceNetwork
from pocketnas.search_space.operations import (
    DepthwiseSeparableConv,
    FactorizedReduce,
    ReLUConvBN,
)
from pocketnas.search_space.published import POCKETNET_GENOTYPE

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _plain_cell_forward(cell: FixedCell, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    states = [cell.preproc0(s0), cell.preproc1(s1)]
    for edges, sources in zip(cell.dag, cell.sources, strict=True):
        states.append(sum(edges[j](states[s]) for j, s in enumerate(sources)))
    return torch.cat([states[i] for i in cell.concat], dim=1)


def _plain_copy(module: nn.Module) -> nn.Module:
    plain = copy.deepcopy(module)
    for sub in plain.modules():
        if isinstance(sub, (DepthwiseSeparableConv, ReLUConvBN)):
            sub.forward = sub.net.forward  # type: ignore[method-assign]
        if isinstance(sub, PReLU):
            sub.forward = types.MethodType(nn.PReLU.forward, sub)  # type: ignore[method-assign]
        if isinstance(sub, FixedCell):
            sub.forward = types.MethodType(_plain_cell_forward, sub)  # type: ignore[method-assign]
    return plain


def _randomise(module: nn.Module) -> None:
    """Give slopes, BatchNorm affine parameters and statistics values away from their defaults."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0, generator=generator)
            elif name.endswith("running_mean") or tensor.dim() == 1:
                tensor.uniform_(-0.5, 0.5, generator=generator)


def _run(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x, *params], grad)
    return out.detach(), grads[0], grads[1:]


def _assert_same(module: nn.Module, x: torch.Tensor, train: bool, **tolerance):
    plain = _plain_copy(module)
    with torch.no_grad():
        grad = torch.randn_like(copy.deepcopy(module).eval()(x))
    module.train(train)
    plain.train(train)

    out, grad_x, grad_params = _run(module, x, grad)
    out_plain, grad_x_plain, grad_params_plain = _run(plain, x, grad)

    torch.testing.assert_close(out, out_plain, **tolerance)
    torch.testing.assert_close(grad_x, grad_x_plain, **tolerance)
    assert len(grad_params) == len(grad_params_plain) > 0
    for ours, reference in zip(grad_params, grad_params_plain, strict=True):
        torch.testing.assert_close(ours, reference, **tolerance)
    # Training mode updates the running statistics once per forward pass, as the plain copy does.
    for (name, ours), (_, reference) in zip(
        module.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(ours, reference, **tolerance, msg=name)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_separable_conv_matches_plain(kernel, stride, train):
    torch.manual_seed(kernel * 10 + stride)
    op = DepthwiseSeparableConv(6, 6, kernel, stride, affine=True).double()
    _randomise(op)
    _assert_same(op, torch.randn(4, 6, 11, 11, dtype=torch.float64), train, **TIGHT)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_relu_conv_bn_matches_plain(affine, train):
    torch.manual_seed(1)
    op = ReLUConvBN(8, 6, affine=affine).double()
    _randomise(op)
    _assert_same(op, torch.randn(3, 8, 9, 9, dtype=torch.float64), train, **TIGHT)


@pytest.mark.parametrize("train", [True, False])
def test_factorized_reduce_matches_plain(train):
    torch.manual_seed(2)
    op = FactorizedReduce(6, 8).double()
    _randomise(op)
    _assert_same(op, torch.randn(3, 6, 9, 9, dtype=torch.float64), train, **TIGHT)


# Identity edges first, second and alone, pooling, `none` and a node read by two later nodes:
# the cases where a node may or may not add to an edge output in place.
MIXED_GENOTYPE = Genotype(
    normal=(
        (("skip_connect", 0), ("dw_conv_3x3", 1)),
        (("dw_conv_1x1", 2), ("skip_connect", 0)),
        (("skip_connect", 2), ("skip_connect", 3)),
        (("none", 4), ("avg_pool_3x3", 2)),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        (("max_pool_3x3", 0), ("skip_connect", 1)),
        (("skip_connect", 2), ("dw_conv_5x5", 1)),
    ),
    reduce_concat=(2, 3),
)


def _face_network(genotype: Genotype = POCKETNET_GENOTYPE) -> FaceNetwork:
    torch.manual_seed(4)
    net = FaceNetwork(genotype, channels=4, layers=5, embedding_size=16, image_size=32)
    _randomise(net)
    return net


@pytest.mark.parametrize(
    "genotype", [POCKETNET_GENOTYPE, MIXED_GENOTYPE], ids=["pocketnet", "mixed"]
)
@pytest.mark.parametrize("train", [True, False])
def test_face_network_matches_plain_float64(train, genotype):
    net = _face_network(genotype).double()
    _assert_same(net, torch.randn(4, 3, 32, 32, dtype=torch.float64), train, **TIGHT)


def test_face_network_matches_plain_channels_last():
    net = _face_network().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    _assert_same(net, x, True, rtol=1e-4, atol=1e-5)


def test_face_network_state_dict_keys_unchanged():
    net = _face_network()
    plain = _plain_copy(net)
    assert list(net.state_dict()) == list(plain.state_dict())
    prelus = [m for m in net.modules() if isinstance(m, nn.PReLU)]
    assert prelus and all(isinstance(m, PReLU) for m in prelus)


def test_face_network_no_grad_matches_plain():
    net = _face_network().double().eval()
    plain = _plain_copy(net)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), **TIGHT)


def test_face_network_autocast_bfloat16_runs():
    net = _face_network().train()
    plain = _plain_copy(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        out_plain = plain(x)
    assert out.dtype == out_plain.dtype
    torch.testing.assert_close(out.float(), out_plain.float(), rtol=0.05, atol=0.05)

    out.float().pow(2).mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_separable_conv_rebuilds_in_backward(monkeypatch):
    """The backward pass recomputes the depthwise and pointwise outputs once each."""
    calls: list[int] = []
    plain_convolve = operations.convolve

    def counting(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        calls.append(conv.groups)
        return plain_convolve(conv, x)

    monkeypatch.setattr(operations, "convolve", counting)
    op = DepthwiseSeparableConv(4, 4, 3, 1)
    out = op(torch.randn(2, 4, 8, 8, requires_grad=True))
    assert calls == []
    out.sum().backward()
    assert calls == [4, 1]


def test_face_network_rebuilds_cell_outputs(monkeypatch):
    """Each cell output is rebuilt for the backward pass, none is kept as a copy."""
    calls: list[int] = []
    plain_concatenate = networks._concatenate

    def counting(parts):
        calls.append(len(parts))
        return plain_concatenate(parts)

    monkeypatch.setattr(networks, "_concatenate", counting)
    net = _face_network()
    out = net(torch.randn(2, 3, 32, 32))
    assert calls == []
    out.sum().backward()
    # Every cell output but the last is read by the next cells' preprocessing.
    assert len(calls) >= len(net.cells) - 1


def test_cell_output_rebuild_rejects_changed_state():
    state = torch.randn(2, 3, 4, 4)
    snapshot = networks._snapshot([state, torch.randn(2, 3, 4, 4)])
    assert networks._concatenate(snapshot).shape == (2, 6, 4, 4)
    state.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        networks._concatenate(snapshot)


def test_separable_conv_second_order_gradients():
    """Rebuilt activations join the graph when the backward pass itself is differentiated."""
    torch.manual_seed(5)
    op = DepthwiseSeparableConv(3, 3, 3, 1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))
