"""Tensors registered with RecomputedTensors are rebuilt in the backward pass, not kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pocketnas.search_space.recompute import RecomputedChain, RecomputedTensors, find_rebuild


def test_registered_tensor_rebuilt_in_backward():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    calls = []

    def rebuild() -> torch.Tensor:
        calls.append(1)
        return torch.tanh(x.detach())

    with RecomputedTensors() as recomputed:
        # tanh saves its output before it is registered, so that copy is kept. Both matmuls
        # run after the registration, and each saves a rebuild in place of `hidden`.
        hidden = recomputed.register(torch.tanh(x), rebuild)
        out = hidden @ weight + hidden @ weight.flip(1)
    assert calls == []

    grads = torch.autograd.grad(out.sum(), (x, weight))
    plain = torch.tanh(x)
    expected = torch.autograd.grad((plain @ weight + plain @ weight.flip(1)).sum(), (x, weight))
    assert len(calls) == 2
    torch.testing.assert_close(grads[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], expected[1], rtol=0, atol=0)


def test_unregistered_tensors_kept():
    x = torch.randn(5, requires_grad=True)
    with RecomputedTensors() as recomputed:
        recomputed.register(torch.zeros(5), lambda: torch.full((5,), float("nan")))
        out = (x * x).sum()
    (grad,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(grad, 2 * x.detach())


def test_rebuild_with_wrong_shape_raises():
    x = torch.randn(3, 4, requires_grad=True)
    with RecomputedTensors() as recomputed:
        hidden = recomputed.register(torch.sigmoid(x), lambda: torch.zeros(4, 3))
        out = (hidden * hidden).sum()
    with pytest.raises(RuntimeError, match=r"saved torch.float32 \[3, 4\]"):
        out.backward()


def test_rebuild_replays_autocast():
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    weight = torch.randn(4, 4, 1, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), RecomputedTensors() as recomputed:
        first = recomputed.register(
            F.conv2d(x, weight), lambda: F.conv2d(x.detach(), weight.detach())
        )
        out = F.conv2d(first, weight)
    assert first.dtype == torch.bfloat16
    # The backward pass runs outside the autocast block, so the rebuild needs the replay to
    # produce the bfloat16 tensor that the forward pass saved.
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_hooks_removed_after_block():
    x = torch.randn(4, requires_grad=True)
    with RecomputedTensors() as recomputed:
        recomputed.register(x, lambda: torch.zeros(4))
    out = (x * x).sum()
    (grad,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(grad, 2 * x.detach())


def test_chain_runs_each_step_once_in_reverse_order():
    calls: list[int] = []

    def step(index: int):
        def run(t: torch.Tensor) -> torch.Tensor:
            calls.append(index)
            return t + index

        return run

    chain = RecomputedChain(lambda: torch.zeros(2), [step(0), step(1), step(2)])
    assert torch.equal(chain.rebuild(2), torch.full((2,), 3.0))
    assert torch.equal(chain.rebuild(1), torch.full((2,), 1.0))
    assert torch.equal(chain.rebuild(0), torch.zeros(2))
    assert calls == [0, 1, 2]


def test_chain_recomputes_released_outputs():
    calls: list[int] = []

    def double(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return 2 * t

    chain = RecomputedChain(lambda: torch.ones(1), [double, double])
    chain.rebuild(0)
    chain.rebuild(0)
    assert torch.equal(chain.rebuild(1), torch.full((1,), 4.0))
    assert len(calls) == 4


def test_inner_block_finds_outer_registration():
    x = torch.randn(3, requires_grad=True)
    calls = []

    def rebuild() -> torch.Tensor:
        calls.append(1)
        return torch.exp(x.detach())

    with RecomputedTensors() as outer:
        hidden = outer.register(torch.exp(x), rebuild)
        with RecomputedTensors():
            out = (hidden * hidden).sum()
    (grad,) = torch.autograd.grad(out, x)
    assert len(calls) == 2
    torch.testing.assert_close(grad, 2 * torch.exp(2 * x.detach()))


def test_find_rebuild_only_inside_block():
    x = torch.randn(3)
    rebuild = lambda: torch.zeros(3)  # noqa: E731
    with RecomputedTensors() as recomputed:
        recomputed.register(x, rebuild)
        assert find_rebuild(x) is rebuild
        assert find_rebuild(torch.randn(3)) is None
    assert find_rebuild(x) is None


def test_freed_registration_not_matched():
    """A tensor at the memory of a freed registered tensor is saved as usual."""
    memory = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    with RecomputedTensors() as recomputed:
        # Both tensors wrap the same NumPy memory in separate storages, as a new tensor that
        # reuses freed memory does.
        registered = torch.from_numpy(memory)
        recomputed.register(registered, lambda: torch.full((8, 8), float("nan")))
        del registered
        reused = torch.from_numpy(memory).requires_grad_()
        out = (reused * reused).sum()
    (grad,) = torch.autograd.grad(out, reused)
    torch.testing.assert_close(grad, 2 * reused.detach())


def test_chain_input_kept_for_last_request():
    starts: list[int] = []

    def start() -> torch.Tensor:
        starts.append(1)
        return torch.ones(2)

    chain = RecomputedChain(start, [lambda t: t * 3])
    assert torch.equal(chain.rebuild(0), torch.full((2,), 3.0))
    assert torch.equal(chain.rebuild(-1), torch.ones(2))
    assert len(starts) == 1
    assert torch.equal(chain.rebuild(-1), torch.ones(2))
    assert len(starts) == 2
