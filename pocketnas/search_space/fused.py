"""A faster search cell that computes the same supernet as `SearchCell` per input state.

`SearchCell` runs every candidate operation of every edge as its own module, which costs a few
hundred small kernel calls per cell. This cell computes the same function with far fewer calls,
because the edges that read one state share work:

- Pooling followed by BatchNorm without affine parameters has no parameters at all, so every
  edge that reads a state computes the same pooled map. It is computed once per state.
- The PReLU of each depthwise-separable operation is `relu(x) - a * relu(-x)`, so `relu(x)` and
  `relu(-x)` are computed once per state and only the slopes differ.
- The depthwise convolutions of one kernel size on all edges of a state run as one grouped
  convolution. The pointwise convolutions of all those operations run as one batched matrix
  product, and their BatchNorms (without affine parameters) as one BatchNorm.
- A 1x1 depthwise convolution is a per-channel multiplication.
- `none` contributes nothing and is never computed.

Edge outputs are the softmax-weighted sums that DARTS defines, so both cells compute the same
function. `FusedSearchCell.from_search_cell` copies the weights of a `SearchCell` across, which
the tests use to check outputs and gradients against the per-edge cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from pocketnas.search_space.cells import MixedOp, SearchCell, SearchCellBase
from pocketnas.search_space.operations import (
    DepthwiseSeparableConv,
    FactorizedReduce,
    PoolBN,
    build_operation,
)
from pocketnas.search_space.recompute import RecomputedTensors

_PRELU_INIT = 0.25  # nn.PReLU's default slope


def _depthwise_kernel(name: str) -> int | None:
    """Kernel size of a `dw_conv_KxK` primitive, None for other primitives."""
    if not name.startswith("dw_conv_"):
        return None
    sides = name.removeprefix("dw_conv_").split("x")
    if len(sides) != 2 or sides[0] != sides[1] or not sides[0].isdigit():
        return None
    return int(sides[0])


def _source_edges(source: int, nodes: int) -> list[int]:
    """Nodes that read state `source` (0 and 1 are the cell inputs, i >= 2 is node i - 2)."""
    return [node for node in range(nodes) if source < node + 2]


def _depthwise(
    activate: Callable[[], torch.Tensor], weight: torch.Tensor, kernel: int, stride: int
) -> torch.Tensor:
    """Depthwise convolution of `activate()`, recomputing that input in the backward pass.

    The activated input is E times the size of the state it comes from, and the backward pass
    can rebuild it with one cheap elementwise operation from tensors that are saved anyway.
    Not saving it cuts about a quarter of the memory a search step keeps for its backward pass
    (measured on the small benchmark supernet of `benchmarks/bench_search_step.py`).
    """
    with RecomputedTensors() as recomputed:
        activated = recomputed.register(activate(), activate)
        if kernel == 1:
            return activated * weight.view(1, -1, 1, 1)
        groups = weight.shape[0]
        return F.conv2d(activated, weight, stride=stride, padding=kernel // 2, groups=groups)


def _scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`scale * bn(x)` per channel for a BatchNorm without affine parameters, in one call."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            # A cumulative moving average, as nn.BatchNorm2d keeps with momentum=None.
            momentum = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(
        x,
        bn.running_mean,
        bn.running_var,
        weight=scale,
        bias=None,
        training=bn.training or bn.running_mean is None,
        momentum=momentum,
        eps=bn.eps,
    )


class SourceOperations(nn.Module):
    """Every candidate operation on the edges that read one state of a cell.

    `forward(x, weights)` takes the state and the softmaxed architecture weights of those edges
    (`weights[e]` is a row of one edge, columns in `primitives` order) and returns a tensor shaped
    (batch, edges, channels, height, width) holding each edge's mixed output.
    """

    def __init__(self, channels: int, stride: int, edges: int, primitives: tuple[str, ...]):
        super().__init__()
        self.channels = channels
        self.stride = stride
        self.edges = edges
        self.primitives = primitives
        self.kernel_sizes: list[int] = []
        self.kernel_columns: list[int] = []
        self.other_columns: list[int] = []
        self.max_column = self.avg_column = self.skip_column = -1
        for column, name in enumerate(primitives):
            kernel = _depthwise_kernel(name)
            if kernel is not None:
                self.kernel_sizes.append(kernel)
                self.kernel_columns.append(column)
            elif name == "max_pool_3x3":
                self.max_column = column
            elif name == "avg_pool_3x3":
                self.avg_column = column
            elif name == "skip_connect":
                self.skip_column = column
            elif name != "none":
                self.other_columns.append(column)

        groups = len(self.kernel_sizes) * edges
        self.slopes = nn.ParameterList(
            nn.Parameter(torch.full((edges, channels), _PRELU_INIT)) for _ in self.kernel_sizes
        )
        self.depthwise = nn.ParameterList(
            nn.Parameter(torch.empty(edges * channels, 1, k, k)) for k in self.kernel_sizes
        )
        self.pointwise = nn.Parameter(torch.empty(groups * channels, channels, 1, 1))
        self.bn = nn.BatchNorm2d(groups * channels, affine=False) if groups else None
        self.max_pool = PoolBN("max", channels, stride, affine=False)
        self.avg_pool = PoolBN("avg", channels, stride, affine=False)
        # A strided skip connection has weights (a factorized reduce) on each edge.
        self.reduce = nn.ModuleList(
            FactorizedReduce(channels, channels, affine=False)
            for _ in range(edges if stride == 2 and self.skip_column >= 0 else 0)
        )
        # Operations registered by users run as their own modules, one per edge.
        self.others = nn.ModuleList(
            nn.ModuleList(
                build_operation(primitives[column], channels, stride, affine=False)
                for column in self.other_columns
            )
            for _ in range(edges if self.other_columns else 0)
        )
        self._init_convolutions()

    def _init_convolutions(self) -> None:
        # The default initialisation of nn.Conv2d for each operation's own convolution.
        for weight in [*self.depthwise, self.pointwise]:
            fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        edges = self.edges
        parts: list[torch.Tensor] = []

        if self.kernel_sizes:
            positive = F.relu(x).unsqueeze(1)
            negative = F.relu(-x).unsqueeze(1)
            outputs = []
            for slopes, kernel, depthwise in zip(
                self.slopes, self.kernel_sizes, self.depthwise, strict=True
            ):

                def activate(slopes: torch.Tensor = slopes, kernel: int = kernel) -> torch.Tensor:
                    # PReLU of every edge: relu(x) - a * relu(-x), with the edge's slopes a.
                    slope_view = slopes.view(1, edges, channels, 1, 1)
                    activated = torch.addcmul(positive, slope_view, negative, value=-1.0)
                    activated = activated.reshape(batch, edges * channels, height, width)
                    if kernel == 1 and self.stride != 1:
                        activated = activated[:, :, :: self.stride, :: self.stride]
                    return activated

                outputs.append(_depthwise(activate, depthwise, kernel, self.stride))
            # Pointwise convolutions of every (kernel size, edge) group as one batched matmul.
            groups = len(self.kernel_sizes) * edges
            out_h, out_w = outputs[0].shape[-2:]
            stacked = torch.stack(outputs, dim=1).view(batch, groups, channels, out_h * out_w)
            mixed = torch.matmul(self.pointwise.view(groups, channels, channels), stacked)
            # The architecture weights scale the normalised outputs, so they act as the
            # BatchNorm's affine scale. This keeps one tensor fewer for the backward pass than a
            # separate product would.
            scale = weights[:, self.kernel_columns].t().reshape(groups, 1).expand(-1, channels)
            mixed = _scaled_batch_norm(
                cast(nn.BatchNorm2d, self.bn),
                mixed.view(batch, groups * channels, out_h, out_w),
                scale.reshape(-1),
            )
            mixed = mixed.view(batch, len(self.kernel_sizes), edges, channels, out_h, out_w)
            parts.append(mixed.sum(1))

        if self.max_column >= 0:
            # PyTorch's CPU max pooling is several times faster on channels-last tensors.
            channels_last = x.contiguous(memory_format=torch.channels_last)
            pooled = F.max_pool2d(channels_last, 3, self.stride, 1).contiguous()
            pooled = self.max_pool.bn(pooled).unsqueeze(1)
            parts.append(weights[:, self.max_column].view(1, edges, 1, 1, 1) * pooled)
        if self.avg_column >= 0:
            pooled = self.avg_pool(x).unsqueeze(1)
            parts.append(weights[:, self.avg_column].view(1, edges, 1, 1, 1) * pooled)

        if self.skip_column >= 0:
            column_weights = weights[:, self.skip_column]
            if self.stride == 1:
                parts.append(column_weights.view(1, edges, 1, 1, 1) * x.unsqueeze(1))
            else:
                reduced = [reduce(x) for reduce in self.reduce]
                stacked = torch.stack(reduced, dim=1)
                parts.append(column_weights.view(1, edges, 1, 1, 1) * stacked)

        if self.other_columns:
            per_edge = []
            for edge, modules in enumerate(cast(list[nn.ModuleList], list(self.others))):
                per_edge.append(
                    sum(
                        weights[edge, column] * module(x)
                        for column, module in zip(self.other_columns, modules, strict=True)
                    )
                )
            parts.append(torch.stack(cast(list[torch.Tensor], per_edge), dim=1))

        if not parts:
            # Only `none` is on these edges, so every edge outputs zeros at the edge's stride.
            shape = (batch, edges, channels, -(-height // self.stride), -(-width // self.stride))
            return x.new_zeros(shape)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total


class FusedSearchCell(SearchCellBase):
    """A DARTS search cell that computes all edges leaving one state together.

    It takes and returns the same tensors as `SearchCell` and has the same number of weights.
    """

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
        self.sources = nn.ModuleList()
        for source in range(nodes + 1):
            stride = 2 if reduction and source < 2 else 1
            edges = len(_source_edges(source, nodes))
            self.sources.append(SourceOperations(channels, stride, edges, tuple(primitives)))

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: list[torch.Tensor]
    ) -> torch.Tensor:
        """Run the cell; `weights[i]` is node i's softmaxed weights, shaped (i + 2, ops)."""
        states = [self.preproc0(s0), self.preproc1(s1)]
        pending: list[torch.Tensor | None] = [None] * self.nodes
        for source, operations in enumerate(self.sources):
            # Every node that reads this state has all its earlier inputs by now.
            readers = _source_edges(source, self.nodes)
            edge_weights = torch.stack([weights[node][source] for node in readers])
            outputs = operations(states[source], edge_weights)
            for edge, node in enumerate(readers):
                contribution = outputs[:, edge]
                current = pending[node]
                pending[node] = contribution if current is None else current + contribution
            finished = source - 1
            if finished >= 0:
                states.append(cast(torch.Tensor, pending[finished]))
        return torch.cat(states[2:], dim=1)

    @classmethod
    def from_search_cell(cls, cell: SearchCell, primitives: tuple[str, ...]) -> FusedSearchCell:
        """Build a fused cell with the weights and BatchNorm statistics of `cell`."""
        channels = cell.out_channels // cell.nodes
        fused = cls(
            cell.nodes,
            _in_channels(cell.preproc0),
            _in_channels(cell.preproc1),
            channels,
            cell.reduction,
            isinstance(cell.preproc0, FactorizedReduce),
            primitives,
        )
        fused.preproc0.load_state_dict(cell.preproc0.state_dict())
        fused.preproc1.load_state_dict(cell.preproc1.state_dict())
        for source, operations in enumerate(fused.sources):
            target = cast(SourceOperations, operations)
            for edge, node in enumerate(_source_edges(source, cell.nodes)):
                mixed = cast(MixedOp, cast(nn.ModuleList, cell.dag[node])[source])
                _copy_edge(target, edge, mixed.ops)
        return fused


def _in_channels(preprocess: nn.Module) -> int:
    if isinstance(preprocess, FactorizedReduce):
        return preprocess.conv11.in_channels
    first_conv = next(m for m in preprocess.modules() if isinstance(m, nn.Conv2d))
    return first_conv.in_channels


@torch.no_grad()
def _copy_edge(target: SourceOperations, edge: int, ops: nn.ModuleList) -> None:
    channels = target.channels
    rows = slice(edge * channels, (edge + 1) * channels)
    for index, column in enumerate(target.kernel_columns):
        op = cast(DepthwiseSeparableConv, ops[column])
        weights = op.state_dict()
        target.slopes[index][edge].copy_(weights["net.0.weight"])
        target.depthwise[index][rows].copy_(weights["net.1.weight"])
        group = index * target.edges + edge
        group_rows = slice(group * channels, (group + 1) * channels)
        target.pointwise[group_rows].copy_(weights["net.2.weight"])
        statistics = op.net[3].state_dict()
        bn_target = cast(nn.BatchNorm2d, target.bn)
        cast(torch.Tensor, bn_target.running_mean)[group_rows].copy_(statistics["running_mean"])
        cast(torch.Tensor, bn_target.running_var)[group_rows].copy_(statistics["running_var"])
    for column, pool in (
        (target.max_column, target.max_pool),
        (target.avg_column, target.avg_pool),
    ):
        if column >= 0:
            pool.load_state_dict(ops[column].state_dict())
    if target.reduce:
        target.reduce[edge].load_state_dict(ops[target.skip_column].state_dict())
    if target.others:
        modules = cast(nn.ModuleList, target.others[edge])
        for module, column in zip(modules, target.other_columns, strict=True):
            module.load_state_dict(ops[column].state_dict())
