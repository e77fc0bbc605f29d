"""Derive a genotype from the architecture weights of a search (DARTS' discretisation rule).

For every intermediate node, each incoming edge is scored by the softmax weight of its strongest
operation other than `none`. The `edges_per_node` best edges are kept, each with that operation.
This is the rule of DARTS (Liu et al., 2019) that PocketNet uses unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pocketnas.errors import CheckpointError, PocketNasError
from pocketnas.fileio import load_checkpoint
from pocketnas.search_space.genotype import CellSpec, Genotype


def derive_cell(
    alpha: torch.Tensor, primitives: tuple[str, ...], nodes: int, edges_per_node: int = 2
) -> CellSpec:
    """Pick the edges of one cell from its (edges, primitives) architecture weights."""
    expected_rows = sum(i + 2 for i in range(nodes))
    if alpha.dim() != 2 or alpha.shape != (expected_rows, len(primitives)):
        raise ValueError(
            f"architecture weights of shape {tuple(alpha.shape)} do not fit {nodes} nodes and "
            f"{len(primitives)} primitives (expected ({expected_rows}, {len(primitives)}))"
        )
    probabilities = torch.softmax(alpha.detach().float(), dim=-1)
    candidates = [i for i, name in enumerate(primitives) if name != "none"]
    cell = []
    start = 0
    for node in range(nodes):
        rows = probabilities[start : start + node + 2]
        start += node + 2
        scored = []
        for source, row in enumerate(rows):
            best = max(candidates, key=lambda i: float(row[i]))
            scored.append((float(row[best]), source, primitives[best]))
        # Sort by score, best first; ties keep the lower input index (stable sort).
        scored.sort(key=lambda item: -item[0])
        kept = scored[:edges_per_node]
        cell.append(tuple((op, source) for _, source, op in kept))
    return tuple(cell)


def derive_genotype(
    alpha_normal: torch.Tensor,
    alpha_reduce: torch.Tensor,
    primitives: tuple[str, ...],
    nodes: int,
) -> Genotype:
    """Derive the normal and reduction cells; every intermediate node joins the cell output."""
    concat = tuple(range(2, 2 + nodes))
    return Genotype(
        normal=derive_cell(alpha_normal, primitives, nodes),
        normal_concat=concat,
        reduce=derive_cell(alpha_reduce, primitives, nodes),
        reduce_concat=concat,
    )


def genotype_from_search_state(state: Any, source: str) -> Genotype:
    """Derive the genotype stored in a search checkpoint dictionary."""
    if not isinstance(state, dict) or "alpha_normal" not in state:
        raise CheckpointError(
            f"{source}: not a pocketnas search checkpoint (no architecture weights)"
        )
    try:
        primitives = tuple(state["primitives"])
        nodes = int(state["nodes"])
        return derive_genotype(state["alpha_normal"], state["alpha_reduce"], primitives, nodes)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: damaged search checkpoint ({exc})") from None


def derive_from_path(path: str | os.PathLike[str]) -> Genotype:
    """Derive the genotype of a search run folder or of one search checkpoint file."""
    target = Path(path)
    if target.is_dir():
        checkpoint = target / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise PocketNasError(f"{target}: not a search run folder (no checkpoints/last.pt)")
        target = checkpoint
    elif not target.exists():
        raise PocketNasError(f"{target}: no such run folder or checkpoint")
    return genotype_from_search_state(load_checkpoint(target), str(target))
