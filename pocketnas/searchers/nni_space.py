"""pocketnas's search supernet as an NNI 3.0 model space (imports NNI: import it lazily).

The network has the parts of `SearchNetwork`: the stem, the cells (reductions at L/3, 2L/3 and
L-1), the embedding tail and a linear classifier. In each cell, every edge from input j to node i
is a `LayerChoice` over `candidate_operations()` (BatchNorm without affine parameters, as in the
supernet), and every node is an `InputChoice` of `EDGES_PER_NODE` of its edges. The labels are
those of `pocketnas.search_space.choices`, and cells of one type share them, so all normal cells
search one architecture and all reduction cells another, as in DARTS.
"""

from __future__ import annotations

from typing import cast

import torch
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace
from torch import nn

from pocketnas.search_space.cells import _preprocess
from pocketnas.search_space.choices import (
    EDGES_PER_NODE,
    inputs_label,
    operation_label,
)
from pocketnas.search_space.networks import (
    build_cells,
    feature_map_size,
    make_stem,
    make_tail,
)
from pocketnas.search_space.operations import build_operation


class ChoiceCell(nn.Module):
    """A search cell whose edges are NNI layer choices and whose nodes are input choices."""

    def __init__(
        self,
        cell_type: str,
        nodes: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        operations: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preproc0, self.preproc1 = _preprocess(
            c_prev_prev, c_prev, channels, reduction_prev, affine=False
        )
        self.edges = nn.ModuleList()
        self.inputs = nn.ModuleList()
        for node in range(nodes):
            edges = nn.ModuleList()
            for source in range(node + 2):
                stride = 2 if reduction and source < 2 else 1
                candidates = {
                    name: build_operation(name, channels, stride, affine=False)
                    for name in operations
                }
                label = operation_label(cell_type, node, source)
                edges.append(LayerChoice(candidates, label=label))
            self.edges.append(edges)
            self.inputs.append(
                InputChoice(
                    node + 2,
                    n_chosen=EDGES_PER_NODE,
                    reduction="sum",
                    label=inputs_label(cell_type, node),
                )
            )
        self.out_channels = channels * nodes

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for node_edges, select in zip(self.edges, self.inputs, strict=True):
            edges = cast(nn.ModuleList, node_edges)
            states.append(select([edge(states[j]) for j, edge in enumerate(edges)]))
        return torch.cat(states[2:], dim=1)


class FaceModelSpace(ModelSpace):
    """The face search supernet with NNI choices in place of architecture weights."""

    def __init__(
        self,
        num_classes: int,
        channels: int,
        layers: int,
        nodes: int,
        stem_multiplier: int,
        embedding_size: int,
        image_size: int,
        operations: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.operations = tuple(operations)
        c_stem = stem_multiplier * channels
        self.stem = make_stem(c_stem)

        def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
            cell_type = "reduce" if reduction else "normal"
            return ChoiceCell(
                cell_type, nodes, c_pp, c_p, c, reduction, reduction_prev, self.operations
            )

        self.cells, c_last = build_cells(layers, c_stem, channels, make_cell)
        self.tail = make_tail(c_last, embedding_size, feature_map_size(image_size))
        self.classifier = nn.Linear(embedding_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of the linear classifier."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.tail(s1).flatten(1))
