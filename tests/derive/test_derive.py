from __future__ import annotations

import pytest
import torch

from pocketnas.derive.derive import derive_cell, derive_genotype
from pocketnas.search_space.operations import PRIMITIVES


def _alpha_for(cell, nodes=4):
    """Architecture weights that favour exactly the edges of `cell` (others near uniform)."""
    rows = sum(i + 2 for i in range(nodes))
    alpha = torch.zeros(rows, len(PRIMITIVES))
    start = 0
    for node, edges in enumerate(cell):
        for rank, (op, source) in enumerate(edges):
            alpha[start + source, PRIMITIVES.index(op)] = 5.0 - rank
        start += node + 2
    return alpha


def test_recovers_the_favoured_edges(published):
    normal = [[tuple(e) for e in node] for node in published["genotype"]["normal"]]
    reduce = [[tuple(e) for e in node] for node in published["genotype"]["reduce"]]
    genotype = derive_genotype(_alpha_for(normal), _alpha_for(reduce), PRIMITIVES, 4)
    assert [list(node) for node in genotype.normal] == normal
    assert [list(node) for node in genotype.reduce] == reduce
    assert genotype.normal_concat == (2, 3, 4, 5)


def test_none_is_never_chosen():
    alpha = torch.zeros(5, len(PRIMITIVES))
    alpha[:, PRIMITIVES.index("none")] = 10.0
    alpha[0, PRIMITIVES.index("dw_conv_5x5")] = 1.0
    alpha[2, PRIMITIVES.index("max_pool_3x3")] = 0.5
    cell = derive_cell(alpha, PRIMITIVES, nodes=2)
    assert all(op != "none" for node in cell for op, _ in node)
    assert cell[0][0] == ("dw_conv_5x5", 0)
    assert cell[1][0] == ("max_pool_3x3", 0)


def test_edges_ranked_by_strongest_non_none_weight():
    # Node 0 has inputs 0 and 1; node 1 has inputs 0, 1 and 2. Input 2 of node 1 wins on its
    # strongest operation even though input 0 has a larger total weight spread over many ops.
    alpha = torch.zeros(5, len(PRIMITIVES))
    alpha[2, 1:] = 1.0  # node 1, input 0: uniform over real operations
    alpha[4, PRIMITIVES.index("dw_conv_3x3")] = 3.0  # node 1, input 2
    alpha[3, PRIMITIVES.index("skip_connect")] = 2.0  # node 1, input 1
    cell = derive_cell(alpha, PRIMITIVES, nodes=2)
    assert cell[1] == (("dw_conv_3x3", 2), ("skip_connect", 1))


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match="do not fit"):
        derive_cell(torch.zeros(3, len(PRIMITIVES)), PRIMITIVES, nodes=4)
