"""Cells of the face search space: the searched (mixed) cell and the fixed cell of a genotype.

Both cells share the DARTS structure: two preprocessed inputs (the outputs of the cells two steps
back and one step back), `nodes` intermediate nodes that each sum edges from earlier inputs, and an
output that concatenates intermediate nodes along channels. A reduction cell applies stride 2 on
the edges that read the two cell inputs.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from pocketnas.search_space.genotype import CellSpec
from pocketnas.search_space.operations import (
    DepthwiseSeparableConv,
    FactorizedReduce,
    PoolBN,
    ReLUConvBN,
    Zero,
    build_operation,
)


def _preprocess(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool, affine: bool):
    # After a reduction cell, input k-2 has twice the resolution of input k-1.
    if reduction_prev:
        preproc0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine)
    else:
        preproc0 = ReLUConvBN(c_prev_prev, channels, affine)
    preproc1 = ReLUConvBN(c_prev, channels, affine)
    return preproc0, preproc1


class MixedOp(nn.Module):
    """Every candidate operation on one edge, mixed by softmaxed architecture weights."""

    def __init__(self, channels: int, stride: int, primitives: tuple[str, ...]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(
            build_operation(name, channels, stride, affine=False) for name in primitives
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor | None = None
        for w, op in zip(weights, self.ops, strict=True):
            # `none` adds w * 0: skipping it changes neither the output nor any gradient.
            if not isinstance(op, Zero):
                out = w * op(x) if out is None else out + w * op(x)
        if out is None:
            # Every candidate is `none`, so the edge outputs zeros at its stride.
            return self.ops[0](x)
        return out


class SearchCellBase(nn.Module):
    """Inputs and settings shared by the search cells: `nodes`, `reduction`, preprocessing."""

    def __init__(
        self,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preproc0, self.preproc1 = _preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=False
        )
        self.out_channels = channels * nodes


class SearchCell(SearchCellBase):
    """A DARTS cell whose every edge is a `MixedOp`."""

    def __init__(
        self,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: tuple[str, ...],
    ) -> None:
        super().__init__(nodes, c_prev_prev, c_prev, channels, reduction, reduction_prev)
        self.dag = nn.ModuleList()
        for node in range(nodes):
            edges = nn.ModuleList()
            for source in range(node + 2):
                stride = 2 if reduction and source < 2 else 1
                edges.append(MixedOp(channels, stride, primitives))
            self.dag.append(edges)

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: list[torch.Tensor]
    ) -> torch.Tensor:
        """Run the cell; `weights[i]` is node i's softmaxed weights, shaped (i + 2, ops)."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        for node_edges, node_weights in zip(self.dag, weights, strict=True):
            edges = cast(nn.ModuleList, node_edges)
            # Node i reads the i + 2 states that exist before it.
            node = sum(edges[j](states[j], node_weights[j]) for j in range(len(edges)))
            states.append(node)
        return torch.cat(states[2:], dim=1)


# Operations that return a new tensor which their backward pass does not read (a BatchNorm output
# or a product with zero), so a node may add its other inputs to that tensor in place.
_FRESH_OUTPUT_TYPES = (DepthwiseSeparableConv, PoolBN, FactorizedReduce, Zero)


def _sum_edges(edges: list[nn.Module], inputs: list[torch.Tensor]) -> torch.Tensor:
    """Sum the outputs of `edges` applied to `inputs`, adding in place where that is safe.

    In-place addition saves one tensor allocation per node. Under glibc this lowered the peak
    RSS of a PocketNetS-128 training step (batch 32) by about 0.3 GiB, more than the tensors
    themselves, because fewer short-lived tensors fragment the heap between the tensors kept for
    the backward pass.
    """
    total = edges[0](inputs[0])
    fresh = isinstance(edges[0], _FRESH_OUTPUT_TYPES)
    for edge, x in zip(edges[1:], inputs[1:], strict=True):
        out = edge(x)
        if fresh and torch.result_type(total, out) == total.dtype:
            total = total.add_(out)
        else:
            total = total + out
            fresh = True
    return total


class FixedCell(nn.Module):
    """The cell that a genotype describes, with affine BatchNorm, for retraining."""

    def __init__(
        self,
        cell: CellSpec,
        concat: tuple[int, ...],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preproc0, self.preproc1 = _preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=True
        )
        self.sources = [[source for _, source in node] for node in cell]
        self.dag = nn.ModuleList()
        for node in cell:
            edges = nn.ModuleList()
            for op_name, source in node:
                stride = 2 if reduction and source < 2 else 1
                edges.append(build_operation(op_name, channels, stride, affine=True))
            self.dag.append(edges)
        self.concat = list(concat)
        self.out_channels = channels * len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return self.forward_with_states(s0, s1)[0]

    def forward_with_states(
        self, s0: torch.Tensor, s1: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the cell and also return the states that its output concatenates."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        for node_edges, sources in zip(self.dag, self.sources, strict=True):
            edges = cast(nn.ModuleList, node_edges)
            states.append(_sum_edges(list(edges), [states[s] for s in sources]))
        parts = [states[i] for i in self.concat]
        return torch.cat(parts, dim=1), parts
