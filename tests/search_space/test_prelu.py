"""pocketnas's PReLU computes what nn.PReLU computes, gradients included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pocketnas.search_space.activations import PReLU


def _pair(num_parameters: int, dtype: torch.dtype) -> tuple[nn.PReLU, PReLU]:
    plain = nn.PReLU(num_parameters).to(dtype)
    fast = PReLU(num_parameters).to(dtype)
    with torch.no_grad():
        plain.weight.uniform_(-1.0, 1.0)
        fast.weight.copy_(plain.weight)
    return plain, fast


def _input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(*shape, dtype=dtype)
    # Exact zeros take the negative slope in nn.PReLU's backward pass.
    x.view(-1)[::7] = 0.0
    return x.requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("shape", "num_parameters"),
    [((4, 6, 9, 9), 6), ((4, 6, 9, 9), 1), ((5, 7), 7), ((3, 5, 4), 5), ((2, 3, 4, 5, 6), 3)],
)
def test_prelu_gradients_bitwise_equal(shape, num_parameters, dtype):
    torch.manual_seed(0)
    plain, fast = _pair(num_parameters, dtype)
    x = _input(shape, dtype)
    grad = torch.randn(*shape, dtype=dtype)

    out_plain = plain(x)
    out_fast = fast(x)
    plain_grads = torch.autograd.grad(out_plain, (x, plain.weight), grad)
    fast_grads = torch.autograd.grad(out_fast, (x, fast.weight), grad)

    assert torch.equal(out_fast, out_plain)
    assert torch.equal(fast_grads[0], plain_grads[0])
    assert torch.equal(fast_grads[1], plain_grads[1])


def test_prelu_channels_last_gradients():
    torch.manual_seed(1)
    plain, fast = _pair(8, torch.float32)
    x = _input((4, 8, 10, 10), torch.float32)
    x_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(4, 8, 10, 10).contiguous(memory_format=torch.channels_last)

    plain_grads = torch.autograd.grad(plain(x), (x, plain.weight), grad.contiguous())
    fast_grads = torch.autograd.grad(fast(x_last), (x_last, fast.weight), grad)

    torch.testing.assert_close(fast_grads[0], plain_grads[0], rtol=0, atol=0)
    torch.testing.assert_close(fast_grads[1], plain_grads[1], rtol=1e-6, atol=1e-5)


def test_prelu_only_input_gradient():
    plain, fast = _pair(3, torch.float64)
    fast.weight.requires_grad_(False)
    x = _input((2, 3, 4, 4), torch.float64)
    (grad_fast,) = torch.autograd.grad(fast(x).sum(), x)
    (grad_plain,) = torch.autograd.grad(plain(x).sum(), x)
    assert torch.equal(grad_fast, grad_plain)


def test_prelu_second_order_gradients():
    _, fast = _pair(3, torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (x,))
    assert torch.autograd.gradgradcheck(fast, (x,))


def test_prelu_autocast_bfloat16_matches_plain():
    torch.manual_seed(2)
    plain, fast = _pair(6, torch.float32)
    x = _input((4, 6, 8, 8), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_plain = plain(x)
        out_fast = fast(x)
    plain_grads = torch.autograd.grad(out_plain.float().sum(), (x, plain.weight))
    fast_grads = torch.autograd.grad(out_fast.float().sum(), (x, fast.weight))

    assert out_fast.dtype == out_plain.dtype == torch.bfloat16
    assert torch.equal(out_fast, out_plain)
    for fast_grad, plain_grad in zip(fast_grads, plain_grads, strict=True):
        assert fast_grad.dtype == plain_grad.dtype == torch.float32
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-2, atol=1e-2)


def test_prelu_keeps_state_dict():
    assert set(PReLU(4).state_dict()) == set(nn.PReLU(4).state_dict()) == {"weight"}
    assert isinstance(PReLU(4), nn.PReLU)
