"""Evaluate a checkpoint on verification sets: pocketnas checkpoints and bare state dicts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pocketnas.config import RetrainConfig
from pocketnas.errors import CheckpointError, PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet, verify
from pocketnas.fileio import load_checkpoint
from pocketnas.retrain.train import build_network, network_spec
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import FaceNetwork
from pocketnas.search_space.published import POCKETNET_GENOTYPE


def _is_state_dict(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    )


def load_network(
    path: str | os.PathLike[str],
    config: RetrainConfig | None = None,
    genotype: Genotype | None = None,
) -> FaceNetwork:
    """Load the embedding network of a checkpoint.

    A pocketnas retraining checkpoint stores its network settings. A bare state dict (as the
    PocketNet authors' code saves) needs `config` (a preset) for the width, depth and embedding
    size, and uses `genotype` or, by default, the published PocketNet genotype.

    Raises:
        CheckpointError: the file is unreadable, is a search checkpoint, or its tensors do not fit.
    """
    target = Path(path)
    state = load_checkpoint(target)
    if isinstance(state, dict) and state.get("kind") == "retrain":
        try:
            model = build_network(state["network"])
            model.load_state_dict(state["model"])
        except (KeyError, TypeError, ValueError, RuntimeError, PocketNasError) as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(f"{target}: damaged retraining checkpoint ({first})") from None
        return model
    if isinstance(state, dict) and state.get("kind") == "search":
        raise CheckpointError(
            f"{target}: is a search checkpoint; derive its genotype (pocketnas derive) and "
            "retrain it before evaluating"
        )
    if not _is_state_dict(state):
        raise CheckpointError(f"{target}: neither a pocketnas checkpoint nor a state dict")
    if config is None:
        raise CheckpointError(
            f"{target}: a bare state dict does not record its network; pass --preset "
            "(for example pocketnet-s128)"
        )
    model = build_network(network_spec(genotype or POCKETNET_GENOTYPE, config))
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{target}: state dict does not fit the network ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected keys, e.g. {unexpected[:2]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(
            f"{target}: tensor shapes do not fit the network ({first.strip()})"
        ) from None
    return model


def _key_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    given = set(state)
    return sorted(expected - given), sorted(given - expected)


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    bins: Sequence[str | os.PathLike[str]],
    config: RetrainConfig | None = None,
    genotype: Genotype | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """10-fold verification of a checkpoint on every `.bin` in `bins`."""
    if not bins:
        raise PocketNasError("no verification .bin file given")
    model = load_network(path, config, genotype)
    image_size = model.image_size
    results: dict[str, Any] = {"checkpoint": str(path), "sets": {}}
    for bin_path in bins:
        verification_set = VerificationSet.load(bin_path, image_size)
        result = verify(model, verification_set, batch_size=batch_size)
        results["sets"][verification_set.name] = {
            "file": str(bin_path),
            "pairs": len(verification_set.issame),
            "accuracy": result.accuracy,
            "accuracy_std": result.accuracy_std,
            "val_at_far_1e-3": result.val,
            "val_std": result.val_std,
            "far": result.far,
            "xnorm": result.xnorm,
        }
    return results
