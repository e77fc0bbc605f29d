"""Face networks of the search space: the search supernet and the retraining network.

Both networks have the same parts: `stem` (3x3 stride-2 convolution and BatchNorm), `cells`
(reduction cells at L/3, 2L/3 and L-1, each doubling the width), and `tail`, the MobileFaceNet-style
embedding head. `forward_features` returns the last cell's feature map; `forward` returns the
embedding (and, for the supernet, class logits of its linear classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from pocketnas.search_space.activations import PReLU
from pocketnas.search_space.cells import FixedCell, SearchCell
from pocketnas.search_space.fused import FusedSearchCell
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.operations import PRIMITIVES, convolve
from pocketnas.search_space.recompute import RecomputedTensors

DOWNSAMPLING = 16
"""Total stride of stem and three reduction cells: a 112x112 image ends as a 7x7 map."""


def reduction_indices(layers: int) -> tuple[int, ...]:
    """Positions of the reduction cells: L/3, 2L/3 and the last cell (PocketNet's layout)."""
    if layers < 4:
        raise ValueError(f"a face network needs at least 4 cells for 3 reductions, got {layers}")
    return (layers // 3, 2 * layers // 3, layers - 1)


def feature_map_size(image_size: int) -> int:
    """Side of the last cell's feature map for a square input of `image_size` pixels."""
    size = image_size
    for _ in range(4):
        size = (size + 1) // 2
    return size


CellBuilder = Callable[[int, int, int, bool, bool], SearchCell | FusedSearchCell | FixedCell]
"""Builds a cell from (c_prev_prev, c_prev, channels, reduction, reduction_prev)."""


def build_cells(
    layers: int, c_stem: int, channels: int, make_cell: CellBuilder
) -> tuple[nn.ModuleList, int]:
    """Stack `layers` cells, doubling the width at each reduction cell.

    Each cell reads the outputs of the two cells before it (the stem's output for the first two),
    so its input widths are the previous cells' `out_channels`.

    Returns:
        The cells and the output width of the last one.
    """
    reductions = reduction_indices(layers)
    c_prev_prev, c_prev, c_cur = c_stem, c_stem, channels
    cells = nn.ModuleList()
    reduction_prev = False
    for index in range(layers):
        reduction = index in reductions
        if reduction:
            c_cur *= 2
        cell = make_cell(c_prev_prev, c_prev, c_cur, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_prev_prev, c_prev = c_prev, cell.out_channels
    return cells, c_prev


def make_stem(c_stem: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, c_stem, 3, 2, 1, bias=False),
        nn.BatchNorm2d(c_stem),
    )


def make_tail(c_in: int, embedding_size: int, map_size: int) -> nn.Sequential:
    """Build the embedding tail (MobileFaceNet style).

    PReLU, 1x1 convolution to 512 channels (1024 for 512-d embeddings), BN, PReLU, a global
    depthwise convolution over the whole `map_size` map, BN, 1x1 convolution to the embedding, BN.
    """
    width = 1024 if embedding_size >= 512 else 512
    return nn.Sequential(
        PReLU(c_in),
        nn.Conv2d(c_in, width, 1, bias=False),
        nn.BatchNorm2d(width),
        PReLU(width),
        nn.Conv2d(width, width, map_size, groups=width, bias=False),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, embedding_size, 1, bias=False),
        nn.BatchNorm2d(embedding_size),
    )


def _snapshot(parts: list[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
    """Detached views of `parts` with their version counters, for `_concatenate`."""
    return [(part.detach(), part._version) for part in parts]


def _concatenate(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Concatenate snapshotted parts along channels, checking that none changed in place."""
    for part, version in parts:
        if part._version != version:
            raise RuntimeError(
                "a cell state was modified in place after the cell output was built, so the "
                "output cannot be rebuilt for the backward pass"
            )
    return torch.cat([part for part, _ in parts], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet over the face operations, with a linear classifier for the search loss."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 16,
        layers: int = 8,
        nodes: int = 4,
        stem_multiplier: int = 3,
        embedding_size: int = 128,
        image_size: int = 112,
        primitives: tuple[str, ...] = PRIMITIVES,
        fused: bool = True,
    ) -> None:
        """Build the supernet.

        `fused` selects `FusedSearchCell`, which computes the same function as the per-edge
        `SearchCell` with far fewer kernel calls; `fused=False` keeps one module per operation.
        """
        super().__init__()
        self.primitives = tuple(primitives)
        self.nodes = nodes
        c_stem = stem_multiplier * channels
        self.stem = make_stem(c_stem)
        cell_type = FusedSearchCell if fused else SearchCell

        def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
            return cell_type(nodes, c_pp, c_p, c, reduction, reduction_prev, self.primitives)

        self.cells, c_last = build_cells(layers, c_stem, channels, make_cell)
        self.tail = make_tail(c_last, embedding_size, feature_map_size(image_size))
        self.classifier = nn.Linear(embedding_size, num_classes)

        edges = sum(i + 2 for i in range(nodes))
        # Small random values break the symmetry between operations, as in DARTS.
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))

    def weights(self) -> list[nn.Parameter]:
        """Network weights (everything but the architecture weights)."""
        alpha_ids = {id(a) for a in self.alphas()}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def alphas(self) -> list[nn.Parameter]:
        """Architecture weights: one row per edge, one column per primitive."""
        return [self.alpha_normal, self.alpha_reduce]

    def _split(self, alpha: torch.Tensor) -> list[torch.Tensor]:
        probabilities = F.softmax(alpha, dim=-1)
        rows, start = [], 0
        for node in range(self.nodes):
            rows.append(probabilities[start : start + node + 2])
            start += node + 2
        return rows

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        weights_normal = self._split(self.alpha_normal)
        weights_reduce = self._split(self.alpha_reduce)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = weights_reduce if cell.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, weights)
        return s1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.forward_features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of the linear classifier."""
        return self.classifier(self.embed(x))


class FaceNetwork(nn.Module):
    """The retraining network of a genotype (PocketNet): stem, fixed cells, embedding tail.

    Its state dict has the same keys and shapes as the PocketNet authors' network, so their
    checkpoints load unchanged.
    """

    def __init__(
        self,
        genotype: Genotype,
        channels: int = 16,
        layers: int = 18,
        stem_multiplier: int = 4,
        embedding_size: int = 128,
        image_size: int = 112,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.embedding_size = embedding_size
        self.image_size = image_size
        c_stem = stem_multiplier * channels
        self.stem = make_stem(c_stem)

        def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
            if reduction:
                spec, concat = genotype.reduce, genotype.reduce_concat
            else:
                spec, concat = genotype.normal, genotype.normal_concat
            return FixedCell(spec, concat, c_pp, c_p, c, reduction, reduction_prev)

        self.cells, c_last = build_cells(layers, c_stem, channels, make_cell)
        self.tail = make_tail(c_last, embedding_size, feature_map_size(image_size))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight)
            elif isinstance(module, nn.BatchNorm2d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1)
            return s1

        with RecomputedTensors() as recomputed:
            # The stem's BatchNorm saves a rebuild of its input from the image.
            conv, norm = cast(nn.Conv2d, self.stem[0]), self.stem[1]
            s0 = s1 = norm(recomputed.register(conv(x), partial(convolve, conv, x)))
            # A cell output is a concatenation of the cell's states, and the operations that read
            # those states keep them for the backward pass anyway. So the next two cells, which
            # read the output, save a rebuild by concatenation instead of a copy of the states.
            for cell in cast(list[FixedCell], list(self.cells)):
                out, parts = cell.forward_with_states(s0, s1)
                recomputed.register(out, partial(_concatenate, _snapshot(parts)))
                s0, s1 = s1, out
        return s1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (un-normalised) face embedding."""
        return self.tail(self.forward_features(x)).flatten(1)
