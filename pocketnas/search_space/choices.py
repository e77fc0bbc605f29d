"""The genotype space as named choices, for search tools outside pocketnas (NNI).

Each cell type (`normal`, `reduce`) has, for every intermediate node i:

- `{cell}_node{i}_op{j}`, one per input j in 0..i+1: the operation on the edge from input j to
  node i. The candidates are every registered operation except `none`, in registration order, so
  an operation registered with `register_operation` joins the space without further changes.
- `{cell}_node{i}_inputs`: the `EDGES_PER_NODE` inputs that node i reads.

`none` is left out because the input choice already decides which edges exist; in DARTS, `none`
only serves to rank edges. A sample maps labels to values. An input choice is a list of input
indices (as NNI's one-shot strategies export it) or text such as `"0,2"` (as NNI's tuners return
the choices of a JSON search space, which admits only numbers and strings). Labels have no `/`,
which NNI 3.0 rejects in labels. Every node of the genotype feeds the cell output, as in DARTS.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from pocketnas.errors import GenotypeError
from pocketnas.search_space.genotype import CellSpec, Genotype
from pocketnas.search_space.operations import OPERATIONS

CELL_TYPES = ("normal", "reduce")
EDGES_PER_NODE = 2


def candidate_operations() -> tuple[str, ...]:
    """Return every registered operation except `none`, in registration order."""
    return tuple(name for name in OPERATIONS if name != "none")


def operation_label(cell: str, node: int, source: int) -> str:
    """Return the label of the operation on the edge from input `source` to node `node`."""
    return f"{cell}_node{node}_op{source}"


def inputs_label(cell: str, node: int) -> str:
    """Return the label of the inputs that node `node` reads."""
    return f"{cell}_node{node}_inputs"


def input_pairs(node: int) -> list[tuple[int, ...]]:
    """Return every set of `EDGES_PER_NODE` inputs that node `node` can read, in order."""
    return list(itertools.combinations(range(node + 2), EDGES_PER_NODE))


def inputs_text(sources: tuple[int, ...] | list[int]) -> str:
    """Return the text form of an input choice, e.g. `"0,2"`."""
    return ",".join(str(source) for source in sources)


def genotype_from_sample(sample: Mapping[str, Any], nodes: int) -> Genotype:
    """Build the genotype that a sample of the choices describes.

    Each node's edges are listed by input index. Labels that the genotype does not need (the
    operations of edges that no node reads) may be absent.

    Raises:
        GenotypeError: a needed label is missing or has an invalid value; the message names it.
    """
    if nodes < 1:
        raise GenotypeError(f"a cell needs at least one intermediate node, got {nodes}")
    cells = {cell: _cell_from_sample(sample, cell, nodes) for cell in CELL_TYPES}
    concat = tuple(range(2, 2 + nodes))
    return Genotype(
        normal=cells["normal"],
        normal_concat=concat,
        reduce=cells["reduce"],
        reduce_concat=concat,
    )


def _cell_from_sample(sample: Mapping[str, Any], cell: str, nodes: int) -> CellSpec:
    operations = set(OPERATIONS)
    spec = []
    for node in range(nodes):
        sources = _parse_inputs(sample, cell, node)
        edges = []
        for source in sources:
            label = operation_label(cell, node, source)
            if label not in sample:
                raise GenotypeError(f"sample has no value for {label!r}")
            operation = sample[label]
            if operation not in operations or operation == "none":
                valid = ", ".join(candidate_operations())
                raise GenotypeError(f"{label}: invalid operation {operation!r}; valid: {valid}")
            edges.append((operation, source))
        spec.append(tuple(edges))
    return tuple(spec)


def _parse_inputs(sample: Mapping[str, Any], cell: str, node: int) -> tuple[int, ...]:
    label = inputs_label(cell, node)
    if label not in sample:
        raise GenotypeError(f"sample has no value for {label!r}")
    value = sample[label]
    try:
        if isinstance(value, str):
            sources = tuple(int(part) for part in value.split(","))
        else:
            sources = tuple(int(part) for part in value)
    except (TypeError, ValueError):
        sources = ()
    valid = [inputs_text(pair) for pair in input_pairs(node)]
    if tuple(sorted(sources)) not in input_pairs(node):
        raise GenotypeError(
            f"{label}: invalid inputs {value!r}; expected {EDGES_PER_NODE} different inputs "
            f"out of 0..{node + 1}, one of {', '.join(valid)}"
        )
    return tuple(sorted(sources))


def sample_from_genotype(genotype: Genotype) -> dict[str, Any]:
    """Return the sample (in the JSON search space's text form) that describes `genotype`.

    Edges of unread inputs get the first candidate operation, because every label of the space
    needs a value.

    Raises:
        GenotypeError: a node does not read exactly `EDGES_PER_NODE` different inputs, uses
            `none`, or a cell does not concatenate all of its nodes.
    """
    sample: dict[str, Any] = {}
    default = candidate_operations()[0]
    nodes = genotype.nodes
    for cell in CELL_TYPES:
        spec: CellSpec = getattr(genotype, cell)
        if len(spec) != nodes or tuple(getattr(genotype, f"{cell}_concat")) != tuple(
            range(2, 2 + nodes)
        ):
            raise GenotypeError(
                f"{cell}: the choice space describes cells of {nodes} nodes that all feed the "
                "cell output"
            )
        for node, edges in enumerate(spec):
            sources = sorted(source for _, source in edges)
            if len(set(sources)) != EDGES_PER_NODE or len(edges) != EDGES_PER_NODE:
                raise GenotypeError(
                    f"{cell}: node {node} reads inputs {sources}; the choice space needs "
                    f"{EDGES_PER_NODE} different inputs per node"
                )
            sample[inputs_label(cell, node)] = inputs_text(sources)
            chosen = dict((source, operation) for operation, source in edges)
            for source in range(node + 2):
                operation = chosen.get(source, default)
                if operation == "none":
                    raise GenotypeError(f"{cell}: node {node} uses 'none', which the space omits")
                sample[operation_label(cell, node, source)] = operation
    return sample
