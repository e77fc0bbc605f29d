"""Rebuild chosen activations in the backward pass instead of keeping them in memory.

Autograd keeps every tensor that a backward formula needs until the backward pass reaches it.
Some of those tensors are cheap to compute again from tensors that are kept anyway: the output of
a PReLU from its input, or the output of a 1x1 convolution from its input. `RecomputedTensors`
installs `torch.autograd.graph.saved_tensors_hooks` that store a function in place of such a
tensor and call it when the backward pass unpacks the tensor. Gradients are unchanged; the cost
is the recomputation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

Rebuild = Callable[[], torch.Tensor]
"""Computes a registered tensor again from tensors that autograd keeps anyway."""


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device)


class _Packed:
    """Saved-tensor record of a registered tensor: its rebuild function, shape and dtype."""

    __slots__ = ("autocast", "dtype", "rebuild", "shape")

    def __init__(self, rebuild: Rebuild, tensor: torch.Tensor, autocast: _AutocastState) -> None:
        self.rebuild = rebuild
        self.shape = tensor.shape
        self.dtype = tensor.dtype
        self.autocast = autocast

    def unpack(self) -> torch.Tensor:
        with self.autocast.replay():
            tensor = self.rebuild()
        if tensor.shape != self.shape or tensor.dtype != self.dtype:
            raise RuntimeError(
                f"a tensor rebuilt for the backward pass is {tensor.dtype} {list(tensor.shape)}, "
                f"but the forward pass saved {self.dtype} {list(self.shape)}"
            )
        return tensor


class _AutocastState:
    """The autocast setting of one device type, to compute again under the same setting."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)
        self.cache = torch.is_autocast_cache_enabled()

    def replay(self) -> torch.autocast:
        # The backward pass usually runs outside the forward pass's autocast block, so a rebuilt
        # tensor would otherwise get another dtype than the one the forward pass saved.
        return torch.autocast(
            self.device_type, dtype=self.dtype, enabled=self.enabled, cache_enabled=self.cache
        )


class _ActiveBlocks(threading.local):
    """The `RecomputedTensors` blocks open in this thread, innermost last."""

    def __init__(self) -> None:
        self.blocks: list[RecomputedTensors] = []


_ACTIVE = _ActiveBlocks()


def _find_entry(tensor: torch.Tensor) -> tuple[Rebuild, _AutocastState] | None:
    key = _identity(tensor)
    for block in reversed(_ACTIVE.blocks):
        entry = block._rebuilds.get(key)
        if entry is None:
            continue
        rebuild, autocast, storage = entry
        if storage.expired():
            # The registered tensor was freed, and `tensor` only reuses its memory.
            del block._rebuilds[key]
            continue
        return rebuild, autocast
    return None


def find_rebuild(tensor: torch.Tensor) -> Rebuild | None:
    """Return the rebuild function registered for `tensor` in an open block, or None."""
    entry = _find_entry(tensor)
    return None if entry is None else entry[0]


class RecomputedTensors:
    """A block whose registered tensors autograd rebuilds in the backward pass, not keeps.

    Register a tensor before the operation that saves it runs. A saved tensor is recognised by
    its data pointer, shape, strides and dtype while the registered tensor's storage is alive,
    so a tensor that later reuses freed memory is not mistaken for it. Tensors that operations
    in the block save and that were not registered are kept as usual.

    Blocks nest: saves in an inner block also find the tensors registered in the blocks around
    it in the same thread. Autograd's saved-tensor hooks of the innermost block alone run, so
    hooks that other code installs between two blocks do not see saves in the inner one.

    The rebuild function must return the registered tensor's values with the same shape and
    dtype; `RuntimeError` is raised in the backward pass otherwise. It runs in the backward
    pass under the autocast setting it was registered with, so it must read only tensors
    that stay unchanged until then (inputs that autograd saves anyway, parameters) and must not
    read the registered tensor itself.
    """

    def __init__(self) -> None:
        self._rebuilds: dict[tuple[Any, ...], tuple[Rebuild, _AutocastState, StorageWeakRef]] = {}
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def register(self, tensor: torch.Tensor, rebuild: Rebuild) -> torch.Tensor:
        """Store `rebuild` instead of `tensor` wherever the block saves it, and return `tensor`."""
        autocast = _AutocastState(tensor.device.type)
        self._rebuilds[_identity(tensor)] = (
            rebuild,
            autocast,
            StorageWeakRef(tensor.untyped_storage()),
        )
        return tensor

    @staticmethod
    def _pack(tensor: torch.Tensor) -> Any:
        entry = _find_entry(tensor)
        if entry is None:
            return tensor
        rebuild, autocast = entry
        return _Packed(rebuild, tensor, autocast)

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.unpack() if isinstance(packed, _Packed) else packed

    def __enter__(self) -> RecomputedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        _ACTIVE.blocks.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _ACTIVE.blocks.remove(self)
        if self._hooks is not None:
            self._hooks.__exit__(exc_type, exc, traceback)
        self._hooks = None
        # Release the rebuild functions and the tensors they read.
        self._rebuilds.clear()


class RecomputedChain:
    """The outputs of a chain of functions applied to one input, rebuilt on request.

    `steps[i]` maps the output of step i - 1 to output i, and output -1 is the input, which
    `start` returns. `rebuild(i)` starts from the latest earlier output it has kept, and keeps the
    outputs it computes on the way until they are requested. The backward pass requests a
    chain's outputs last first, so it runs each step once.
    """

    def __init__(self, start: Rebuild, steps: list[Callable[[torch.Tensor], torch.Tensor]]):
        self._start = start
        self._steps = steps
        self._kept: dict[int, torch.Tensor] = {}

    def rebuild(self, index: int) -> torch.Tensor:
        """Return output `index`, computed again unless kept from an earlier request."""
        kept = self._kept.pop(index, None)
        if kept is not None:
            return kept
        begin = max((i for i in self._kept if i < index), default=None)
        if begin is None:
            out = self._start()
            if index == -1:
                return out
            self._kept[-1] = out
            begin = -1
        else:
            out = self._kept[begin]
        for i in range(begin + 1, index + 1):
            out = self._steps[i](out)
            if i < index:
                self._kept[i] = out
        return out
