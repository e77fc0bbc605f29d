"""Knowledge distillation from a frozen teacher: template and multi-step (PocketNet).

The distillation loss is `weight * MSE(normalize(student), normalize(teacher))` over the
embeddings, added to the margin loss. The teacher runs in eval mode without gradients.

- Template distillation keeps one teacher for the whole run: a pocketnas retraining checkpoint or
  a bare IResNet state dict (such as a published insightface ArcFace ResNet-100) with its
  architecture named.
- Multi-step distillation (Boutros et al., 2021) trains student epoch e against the teacher's
  checkpoint of epoch e, so the student follows the teacher's learning path. A pocketnas teacher
  run keeps `checkpoints/epoch_NNN.pt` after every epoch for this.

Every teacher checkpoint a run needs is checked before the first step (present, readable, same
architecture, embedding size of the student), so a missing file never ends a run after days.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pocketnas.errors import CheckpointError, ConfigError, PocketNasError
from pocketnas.fileio import load_checkpoint
from pocketnas.retrain.models import build_network, iresnet_spec_of_state_dict

logger = logging.getLogger(__name__)


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the model checkpoint kept at the end of (1-based) `epoch`."""
    return f"epoch_{epoch:03d}.pt"


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, weight: float) -> torch.Tensor:
    """`weight` times the mean squared error between the L2-normalised embeddings (float32)."""
    return weight * F.mse_loss(F.normalize(student.float()), F.normalize(teacher.float()))


@dataclass(frozen=True)
class TeacherFile:
    """A checked teacher checkpoint: where it is and the network it holds."""

    path: Path
    spec: dict[str, Any]
    bare: bool  # a plain state dict rather than a pocketnas checkpoint


def _state_and_spec(
    path: Path, state: Any, teacher_arch: str | None
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    if isinstance(state, dict) and state.get("kind") == "retrain":
        if not isinstance(state.get("network"), dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{path}: damaged retraining checkpoint (no network or model)")
        return state["model"], state["network"], False
    if (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        if teacher_arch is None:
            raise CheckpointError(
                f"{path}: a bare state dict does not record its network; name it with "
                "--teacher-arch (for example iresnet100)"
            )
        try:
            return state, iresnet_spec_of_state_dict(teacher_arch, state), True
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    raise CheckpointError(f"{path}: neither a pocketnas retraining checkpoint nor a state dict")


def _check_fits(path: Path, spec: dict[str, Any], weights: dict[str, Any]) -> None:
    """Raise CheckpointError unless `weights` has exactly the keys and shapes of the network."""
    try:
        expected = build_network(spec).state_dict()
    except (KeyError, TypeError, ValueError, PocketNasError) as exc:
        raise CheckpointError(f"{path}: network description is damaged ({exc})") from None
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the {spec.get('arch', 'derived')} network "
            f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
            f"e.g. {unexpected[:2]})"
        )
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(weights[key].shape)}, the network needs "
                f"{tuple(tensor.shape)}"
            )


def inspect_teacher(
    path: str | os.PathLike[str], embedding_size: int, teacher_arch: str | None = None
) -> TeacherFile:
    """Check one teacher checkpoint without reading its tensors (they are memory-mapped).

    Raises:
        CheckpointError: the file is missing or damaged, or its embedding size differs from
            `embedding_size`.
    """
    target = Path(path)
    if not target.is_file():
        raise CheckpointError(f"{target}: teacher checkpoint not found")
    weights, spec, bare = _state_and_spec(target, load_checkpoint(target, mmap=True), teacher_arch)
    teacher_size = int(spec.get("embedding_size", -1))
    if teacher_size != embedding_size:
        raise CheckpointError(
            f"{target}: the teacher's embedding size is {teacher_size}, the student's is "
            f"{embedding_size}; distillation compares embeddings of the same size"
        )
    _check_fits(target, spec, weights)
    return TeacherFile(target, spec, bare)


def template_file(path: str | os.PathLike[str]) -> Path:
    """Return the template teacher's checkpoint: `path` itself, or a teacher run folder's last.pt.

    Raises:
        CheckpointError: a folder without `checkpoints/last.pt`.
    """
    target = Path(path)
    if not target.is_dir():
        return target
    for candidate in (target / "checkpoints" / "last.pt", target / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{target}: no teacher checkpoint in this folder (looked for checkpoints/last.pt)"
    )


def multi_step_files(
    folder: str | os.PathLike[str], epochs: int, embedding_size: int
) -> list[TeacherFile]:
    """Check the teacher checkpoints of epochs 1..`epochs` in a teacher run folder.

    Every file is looked at before training starts; the first missing or mismatched one is named.

    Raises:
        CheckpointError: a checkpoint is missing, damaged, of another architecture than epoch 1's,
            or of another embedding size than the student's.
    """
    root = Path(folder)
    if root.is_file():
        raise ConfigError(
            f"{root}: multi-step distillation needs the teacher's run folder (with "
            "checkpoints/epoch_001.pt, ...), not one checkpoint file"
        )
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not base.is_dir():
        raise CheckpointError(f"{root}: teacher run folder not found")
    files: list[TeacherFile] = []
    for epoch in range(1, epochs + 1):
        path = base / epoch_checkpoint_name(epoch)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: teacher checkpoint of epoch {epoch} not found; multi-step distillation "
                f"of {epochs} epochs needs the teacher's checkpoints of epochs 1 to {epochs}"
            )
        teacher = inspect_teacher(path, embedding_size)
        if files and _architecture(teacher.spec) != _architecture(files[0].spec):
            raise CheckpointError(
                f"{path}: the teacher network differs from epoch 1's "
                f"({_architecture(teacher.spec)} against {_architecture(files[0].spec)})"
            )
        files.append(teacher)
    return files


def _architecture(spec: dict[str, Any]) -> str:
    arch = str(spec.get("arch", "derived"))
    if arch != "derived":
        return arch
    return f"derived network of {spec.get('channels')} channels and {spec.get('layers')} cells"


def load_teacher(teacher: TeacherFile, device: torch.device) -> nn.Module:
    """Build a checked teacher, load its weights, freeze it and put it in eval mode on `device`."""
    state = load_checkpoint(teacher.path)
    weights = state if teacher.bare else state["model"]
    model = build_network(teacher.spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{teacher.path}: weights do not load ({exc})") from None
    model.requires_grad_(False)
    return model.eval().to(device)


class TeacherSchedule:
    """The teacher of each epoch: one network for template distillation, epoch e's for multi-step.

    Networks are loaded lazily and the previous one is dropped, so one teacher is in memory.
    """

    def __init__(self, files: Sequence[TeacherFile], multi_step: bool, device: torch.device):
        self.files = list(files)
        self.multi_step = multi_step
        self.device = device
        self._loaded: tuple[int, nn.Module] | None = None

    @property
    def image_size(self) -> int:
        return int(self.files[0].spec["image_size"])

    def for_epoch(self, epoch: int) -> nn.Module:
        """Return the teacher for 0-based `epoch`."""
        index = min(epoch, len(self.files) - 1) if self.multi_step else 0
        if self._loaded is None or self._loaded[0] != index:
            self._loaded = None
            model = load_teacher(self.files[index], self.device)
            self._loaded = (index, model)
            logger.info("teacher for epoch %d: %s", epoch + 1, self.files[index].path)
        return self._loaded[1]
