"""NNI search spaces (the JSON of `searchSpaceFile`), generated from pocketnas's registries.

- `genotype`: an operation choice per edge and an input choice per node of both cell types, read
  from the operation registry (`pocketnas.search_space.choices`), for multi-trial NAS;
- `width-embedding`: initial channels (from `WIDTH_CELLS`) and embedding size, for tuning.

`experiments/*.json` are the output of `pocketnas experiments space`; a test checks that they
match the registries, so regenerate them after registering an operation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pocketnas.errors import ConfigError
from pocketnas.fileio import atomic_write_text
from pocketnas.search_space.choices import (
    CELL_TYPES,
    candidate_operations,
    input_pairs,
    inputs_label,
    inputs_text,
    operation_label,
)
from pocketnas.search_space.widths import EMBEDDING_SIZES, WIDTH_CELLS

SPACE_NAMES = ("genotype", "width-embedding")


def genotype_search_space(nodes: int = 4) -> dict[str, Any]:
    """Return the NNI search space of cell genotypes with `nodes` intermediate nodes."""
    if nodes < 1:
        raise ConfigError(f"nodes must be a positive integer, got {nodes}")
    operations = list(candidate_operations())
    space: dict[str, Any] = {}
    for cell in CELL_TYPES:
        for node in range(nodes):
            pairs = [inputs_text(pair) for pair in input_pairs(node)]
            space[inputs_label(cell, node)] = {"_type": "choice", "_value": pairs}
            for source in range(node + 2):
                space[operation_label(cell, node, source)] = {
                    "_type": "choice",
                    "_value": operations,
                }
    return space


def width_embedding_search_space() -> dict[str, Any]:
    """Return the NNI search space of initial channels and embedding size."""
    return {
        "channels": {"_type": "choice", "_value": list(WIDTH_CELLS)},
        "embedding_size": {"_type": "choice", "_value": list(EMBEDDING_SIZES)},
    }


def search_space(name: str, nodes: int = 4) -> dict[str, Any]:
    """Return the search space `name` (one of `SPACE_NAMES`).

    Raises:
        ConfigError: `name` is not one of `SPACE_NAMES`.
    """
    if name == "genotype":
        return genotype_search_space(nodes)
    if name == "width-embedding":
        return width_embedding_search_space()
    raise ConfigError(f"unknown search space {name!r}; valid: {', '.join(SPACE_NAMES)}")


def search_space_json(name: str, nodes: int = 4) -> str:
    """Return the search space `name` as the JSON text that `experiments/` ships."""
    return json.dumps(search_space(name, nodes), indent=2) + "\n"


def write_search_space(name: str, path: str | os.PathLike[str], nodes: int = 4) -> None:
    """Write the search space `name` to `path` as JSON, atomically."""
    atomic_write_text(path, search_space_json(name, nodes))
