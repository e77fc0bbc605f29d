"""Evaluate a checkpoint on verification sets and IJB folders.

The checkpoint may be a pocketnas retraining checkpoint, a search checkpoint (the supernet's
embedding is evaluated), a run folder (its `checkpoints/last.pt`), or a bare state dict such as
the PocketNet authors publish.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketnas.config import RetrainConfig
from pocketnas.errors import CheckpointError, PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet, verify
from pocketnas.evaluation.ijb import evaluate_ijb
from pocketnas.evaluation.verification import ROC_THRESHOLDS
from pocketnas.fileio import load_checkpoint
from pocketnas.retrain.train import build_network, config_genotype, network_spec
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import SearchNetwork
from pocketnas.search_space.published import POCKETNET_GENOTYPE

# Points kept per decade of FAR when an IJB ROC is stored; a plot cannot show more.
_ROC_POINTS_PER_DECADE = 100


class SupernetEmbedding(nn.Module):
    """The embedding of a search supernet (its classifier dropped), for verification."""

    def __init__(self, supernet: SearchNetwork, image_size: int) -> None:
        super().__init__()
        self.supernet = supernet
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.supernet.embed(images)


def _is_state_dict(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    )


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Return `path`, or `checkpoints/last.pt` inside it when it is a run folder.

    Raises:
        CheckpointError: `path` is a folder without `checkpoints/last.pt`.
    """
    target = Path(path)
    if not target.is_dir():
        return target
    last = target / "checkpoints" / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: checkpoint not found; is {target} a pocketnas run folder?")
    return last


def load_network(
    path: str | os.PathLike[str],
    config: RetrainConfig | None = None,
    genotype: Genotype | None = None,
) -> nn.Module:
    """Load the embedding network of a checkpoint or run folder.

    A pocketnas retraining checkpoint stores its network settings, and a search checkpoint its
    configuration, so the supernet's embedding is returned. A bare state dict (as the PocketNet
    authors' code saves) needs `config` (a preset) for the width, depth and embedding size, and
    uses `genotype` or, by default, the published PocketNet genotype. The returned module has
    an `image_size` attribute, the input side it was built for.

    Raises:
        CheckpointError: the file is unreadable, or its tensors do not fit the network.
    """
    target = checkpoint_path(path)
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
        return _load_supernet(target, state)
    if not _is_state_dict(state):
        raise CheckpointError(f"{target}: neither a pocketnas checkpoint nor a state dict")
    if config is None:
        raise CheckpointError(
            f"{target}: a bare state dict does not record its network; pass --preset "
            "(for example pocketnet-s128)"
        )
    chosen = genotype or config_genotype(config) or POCKETNET_GENOTYPE
    model = build_network(network_spec(chosen, config))
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


def _load_supernet(target: Path, state: dict[str, Any]) -> SupernetEmbedding:
    try:
        settings = state["config"]
        classes = int(state["model"]["classifier.weight"].shape[0])
        supernet = SearchNetwork(
            classes,
            channels=int(settings["channels"]),
            layers=int(settings["layers"]),
            nodes=int(settings["nodes"]),
            stem_multiplier=int(settings["stem_multiplier"]),
            embedding_size=int(settings["embedding_size"]),
            image_size=int(settings["image_size"]),
            primitives=tuple(state["primitives"]),
        )
        supernet.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, PocketNasError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{target}: damaged search checkpoint ({first})") from None
    return SupernetEmbedding(supernet, int(settings["image_size"]))


def _key_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    given = set(state)
    return sorted(expected - given), sorted(given - expected)


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    bins: Sequence[str | os.PathLike[str]] = (),
    config: RetrainConfig | None = None,
    genotype: Genotype | None = None,
    batch_size: int = 64,
    ijb: Sequence[str | os.PathLike[str]] = (),
    workers: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on every `.bin` in `bins` and every IJB folder in `ijb`.

    Returns:
        A JSON-ready dictionary: `checkpoint`, `sets` (10-fold verification per `.bin` file,
        with its mean ROC over the folds) and `ijb` (TAR at FAR per IJB set, with its ROC).

    Raises:
        PocketNasError: neither files nor folders are given, or one of them is bad.
    """
    if not bins and not ijb:
        raise PocketNasError("no verification .bin file or IJB folder given")
    model = load_network(path, config, genotype)
    image_size = int(getattr(model, "image_size", 112))
    results: dict[str, Any] = {"checkpoint": str(checkpoint_path(path)), "sets": {}, "ijb": {}}
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
            "roc": {
                "thresholds": ROC_THRESHOLDS.tolist(),
                "fpr": result.fpr.tolist(),
                "tpr": result.tpr.tolist(),
            },
        }
    for folder in ijb:
        ijb_result = evaluate_ijb(
            model, folder, batch_size=batch_size, workers=workers, show_progress=show_progress
        )
        far, tar = thin_roc(ijb_result.far, ijb_result.tar)
        results["ijb"][ijb_result.name] = {
            "folder": str(folder),
            **ijb_result.to_dict(),
            "roc": {"far": far.tolist(), "tar": tar.tolist()},
        }
    return results


def thin_roc(
    far: np.ndarray, tar: np.ndarray, points_per_decade: int = _ROC_POINTS_PER_DECADE
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the highest-TAR point in each of `points_per_decade` log-FAR bins per decade.

    A ROC of millions of IJB-C pairs would make the stored results large, while a plot on a
    logarithmic FAR axis shows only a few hundred distinct points. Points at FAR 0 are dropped,
    because a log axis cannot show them.
    """
    far = np.asarray(far, dtype=np.float64)
    tar = np.asarray(tar, dtype=np.float64)
    positive = far > 0
    far, tar = far[positive], tar[positive]
    if len(far) == 0:
        return far, tar
    bins = np.floor(np.log10(far) * points_per_decade).astype(np.int64)
    # The ROC is sorted by FAR, so each bin is one run; its last point has the highest TAR.
    last_of_bin = np.r_[np.flatnonzero(np.diff(bins)), len(bins) - 1]
    return far[last_of_bin], tar[last_of_bin]
