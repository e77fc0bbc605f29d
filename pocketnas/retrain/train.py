"""Retraining of a derived network with a margin head (ArcFace), from scratch.

The schedule follows PocketNet: SGD with momentum, the learning rate scaled linearly with the batch
(`lr * batch / lr_reference_batch`), divided by 10 at the milestone epochs, optional linear
warm-up, and gradient-norm clipping. After every epoch the run folder gets a row of `metrics.csv`,
the verification accuracy on each `.bin` set, `checkpoints/last.pt` and, when the mean
verification accuracy improves, `checkpoints/best.pt`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pocketnas.config import RetrainConfig, save_config, to_dict
from pocketnas.data.dataset import FaceRecordDataset
from pocketnas.errors import CheckpointError, ConfigError, PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet, verify
from pocketnas.fileio import atomic_torch_save, load_checkpoint
from pocketnas.retrain.heads import ArcFace
from pocketnas.runs import (
    RunFolder,
    resize_batch,
    rng_state,
    seed_everything,
    set_rng_state,
    training_loader,
)
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import FaceNetwork

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class RetrainResult:
    """Paths and final metrics of a finished retraining."""

    run_dir: Path
    checkpoint: Path
    best_checkpoint: Path | None
    metrics: dict[str, Any]


def network_spec(genotype: Genotype, config: RetrainConfig) -> dict[str, Any]:
    """Return the settings needed to rebuild the network of a checkpoint."""
    return {
        "genotype": genotype.to_dict(),
        "channels": config.channels,
        "layers": config.layers,
        "stem_multiplier": config.stem_multiplier,
        "embedding_size": config.embedding_size,
        "image_size": config.image_size,
    }


def config_genotype(config: RetrainConfig) -> Genotype | None:
    """Parse the genotype that a retraining preset carries, or return None when it has none."""
    if config.genotype is None:
        return None
    try:
        return Genotype.from_text(config.genotype)
    except PocketNasError as exc:
        raise ConfigError(f"genotype of the retraining config is invalid: {exc}") from None


def build_network(spec: dict[str, Any]) -> FaceNetwork:
    """Rebuild a `FaceNetwork` from a `network_spec` dictionary."""
    return FaceNetwork(
        Genotype.from_dict(spec["genotype"]),
        channels=int(spec["channels"]),
        layers=int(spec["layers"]),
        stem_multiplier=int(spec["stem_multiplier"]),
        embedding_size=int(spec["embedding_size"]),
        image_size=int(spec["image_size"]),
    )


def lr_factor(config: RetrainConfig, epoch_progress: float) -> float:
    """Multiplier of the base learning rate after `epoch_progress` epochs (fractional)."""
    if config.warmup_epochs > 0 and epoch_progress < config.warmup_epochs:
        return epoch_progress / config.warmup_epochs
    passed = sum(1 for milestone in config.milestones if epoch_progress >= milestone)
    return config.lr_gamma**passed


def run_retrain(
    config: RetrainConfig,
    genotype: Genotype,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    verification_bins: Sequence[str | os.PathLike[str]] = (),
    resume: bool = False,
    show_progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> RetrainResult:
    """Train the network of `genotype` with ArcFace on the data in `data_dir`.

    Raises:
        PocketNasError: bad data or verification files, an occupied run folder without `resume`,
            or a checkpoint that does not fit.
    """
    config.validate()
    dataset = FaceRecordDataset(data_dir, train=True)
    sets = [VerificationSet.load(path, config.image_size) for path in verification_bins]
    run = RunFolder(out_dir)
    resuming = run.prepare(resume)
    run.attach_log()
    try:
        return _retrain(config, genotype, dataset, sets, run, resuming, show_progress, on_epoch_end)
    finally:
        run.detach_log()


def _retrain(
    config: RetrainConfig,
    genotype: Genotype,
    dataset: FaceRecordDataset,
    sets: list[VerificationSet],
    run: RunFolder,
    resuming: bool,
    show_progress: bool,
    on_epoch_end: EpochCallback | None,
) -> RetrainResult:
    seed_everything(config.seed)
    logger.info(
        "retraining on %d images of %d identities from %s",
        len(dataset),
        dataset.num_classes,
        dataset.record_set.folder,
    )
    loader = training_loader(dataset, config.batch_size, config.workers, config.seed)
    steps = len(loader)
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)

    spec = network_spec(genotype, config)
    model = build_network(spec)
    # Channels-last is faster for depthwise convolutions on CPUs and GPUs alike.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    head = ArcFace(
        config.embedding_size, int(dataset.num_classes), config.margin_s, config.margin_m
    )
    base_lr = config.lr * config.batch_size / config.lr_reference_batch
    optimizer = torch.optim.SGD(
        [
            {"params": model.parameters()},
            {"params": head.parameters()},
        ],
        lr=base_lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )

    start_epoch = 0
    best_accuracy = -math.inf
    if resuming:
        state = load_checkpoint(run.last_checkpoint)
        start_epoch, best_accuracy = _restore(state, run.last_checkpoint, model, head, optimizer)
        run.keep_metrics_until(start_epoch)
        logger.info("resuming retraining from epoch %d of %d", start_epoch + 1, config.epochs)
    else:
        save_config(run.path / "config.yaml", config)

    metrics: dict[str, Any] = {}
    best_path = run.checkpoints / "best.pt"
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        head.train()
        loss_sum, seen = 0.0, 0
        progress = tqdm(
            total=steps,
            desc=f"retrain epoch {epoch + 1}/{config.epochs}",
            disable=not show_progress,
            unit="step",
            leave=False,
        )
        for step, (images, labels) in enumerate(loader):
            if step >= steps:
                break
            lr = base_lr * lr_factor(config, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = resize_batch(images, config.image_size)
            images = images.contiguous(memory_format=torch.channels_last)
            logits = head(model(images), labels)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise PocketNasError(
                    f"non-finite loss {float(loss)} at epoch {epoch + 1} step {step}; the last "
                    f"good checkpoint is {run.last_checkpoint}; lower the learning rate or margin"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                list(model.parameters()) + list(head.parameters()), config.grad_clip
            )
            optimizer.step()

            loss_sum += float(loss.detach()) * len(labels)
            seen += len(labels)
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.4f}")
            progress.update()
        progress.close()

        metrics = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1),
            "seconds": time.perf_counter() - started,
        }
        accuracies = []
        for verification_set in sets:
            result = verify(model, verification_set)
            metrics[f"{verification_set.name}_accuracy"] = result.accuracy
            metrics[f"{verification_set.name}_accuracy_std"] = result.accuracy_std
            accuracies.append(result.accuracy)
        improved = False
        if accuracies:
            mean_accuracy = sum(accuracies) / len(accuracies)
            if mean_accuracy > best_accuracy:
                best_accuracy = mean_accuracy
                improved = True
        state = _checkpoint(config, spec, model, head, optimizer, epoch + 1, best_accuracy)
        atomic_torch_save(run.last_checkpoint, state)
        if improved:
            atomic_torch_save(best_path, state)
        run.log_metrics(metrics)
        logger.info(
            "retrain epoch %d/%d: loss %.3f%s",
            epoch + 1,
            config.epochs,
            metrics["train_loss"],
            "".join(f", {s.name} {metrics[f'{s.name}_accuracy']:.4f}" for s in sets),
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)

    return RetrainResult(
        run_dir=run.path,
        checkpoint=run.last_checkpoint,
        best_checkpoint=best_path if best_path.is_file() else None,
        metrics=metrics,
    )


def _checkpoint(
    config: RetrainConfig,
    spec: dict[str, Any],
    model: FaceNetwork,
    head: ArcFace,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_accuracy: float,
) -> dict[str, Any]:
    return {
        "kind": "retrain",
        "epoch": epoch,
        "config": to_dict(config),
        "network": spec,
        "model": model.state_dict(),
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_accuracy": best_accuracy,
        "rng": rng_state(),
    }


def _restore(
    state: Any, path: Path, model: FaceNetwork, head: ArcFace, optimizer: torch.optim.Optimizer
) -> tuple[int, float]:
    if not isinstance(state, dict) or state.get("kind") != "retrain":
        raise CheckpointError(f"{path}: not a pocketnas retraining checkpoint")
    try:
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return int(state["epoch"]), float(state["best_accuracy"])
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: checkpoint does not fit this retraining configuration ({first})"
        ) from None
