"""The DARTS search loop over the face search space.

Each step updates the architecture weights on a batch of the architecture half of the data, then
the network weights on a batch of the weight half. The two halves come from a stratified 50/50
split, so every identity with two or more images is seen by both. After every epoch the run folder
gets the derived genotype (`genotypes/epoch_NNN.json`), the architecture weights
(`alphas/epoch_NNN.json`), a row of `metrics.csv` and `checkpoints/last.pt`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from pocketnas.config import SearchConfig, save_config, to_dict
from pocketnas.data.dataset import FaceRecordDataset
from pocketnas.derive.derive import derive_genotype
from pocketnas.errors import CheckpointError, PocketNasError
from pocketnas.fileio import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from pocketnas.runs import (
    RunFolder,
    resize_batch,
    rng_state,
    seed_everything,
    set_rng_state,
    training_loader,
)
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import SearchNetwork
from pocketnas.searchers.darts import Architect

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class SearchResult:
    """Genotype, run folder and final accuracy of a finished search."""

    genotype: Genotype
    run_dir: Path
    epochs: int
    val_accuracy: float


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices 50/50 within every identity; odd counts give the extra to weights."""
    rng = np.random.default_rng(seed)
    weight_half, arch_half = [], []
    # A stable sort groups the indices by label in ascending order, in one pass over the labels
    # instead of one per identity.
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    for indices in np.split(order, starts[1:]):
        rng.shuffle(indices)
        cut = math.ceil(len(indices) / 2)
        weight_half.append(indices[:cut])
        arch_half.append(indices[cut:])
    return np.sort(np.concatenate(weight_half)), np.sort(np.concatenate(arch_half))


def search_halves(dataset: FaceRecordDataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into its weight and architecture halves, per identity.

    Raises:
        PocketNasError: every identity has one image, so the architecture half would be empty.
    """
    weight_idx, arch_idx = stratified_halves(np.asarray(dataset.record_set.labels), seed)
    if len(arch_idx) == 0:
        raise PocketNasError(
            f"{dataset.record_set.folder}: every identity has a single image, so the architecture "
            "half of the stratified split is empty; a search needs two or more images per identity"
        )
    return weight_idx, arch_idx


def _alphas_document(model: SearchNetwork, epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "primitives": list(model.primitives),
        "nodes": model.nodes,
        "normal": torch.softmax(model.alpha_normal.detach(), -1).tolist(),
        "reduce": torch.softmax(model.alpha_reduce.detach(), -1).tolist(),
        "normal_raw": model.alpha_normal.detach().tolist(),
        "reduce_raw": model.alpha_reduce.detach().tolist(),
    }


def run_search(
    config: SearchConfig,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    show_progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> SearchResult:
    """Search a cell genotype on the face data in `data_dir`; write the run to `out_dir`.

    Raises:
        PocketNasError: bad data, an occupied run folder without `resume`, or a checkpoint that
            does not fit the configuration.
    """
    config.validate()
    dataset = FaceRecordDataset(data_dir, train=True)
    labels = np.asarray(dataset.record_set.labels)
    num_classes = int(dataset.num_classes)
    # Split before the run folder is made, so that bad data leaves no folder behind.
    halves = search_halves(dataset, config.seed)
    run = RunFolder(out_dir)
    resuming = run.prepare(resume)
    run.attach_log()
    try:
        return _search(
            config, dataset, labels, num_classes, halves, run, resuming, show_progress, on_epoch_end
        )
    finally:
        run.detach_log()


def _search(
    config: SearchConfig,
    dataset: FaceRecordDataset,
    labels: np.ndarray,
    num_classes: int,
    halves: tuple[np.ndarray, np.ndarray],
    run: RunFolder,
    resuming: bool,
    show_progress: bool,
    on_epoch_end: EpochCallback | None,
) -> SearchResult:
    seed_everything(config.seed)
    logger.info(
        "searching on %d images of %d identities from %s",
        len(labels),
        num_classes,
        dataset.record_set.folder,
    )
    weight_idx, arch_idx = halves
    workers = config.workers
    weight_loader = training_loader(
        Subset(dataset, weight_idx.tolist()), config.batch_size, workers, config.seed
    )
    arch_loader = training_loader(
        Subset(dataset, arch_idx.tolist()), config.batch_size, workers, config.seed + 1
    )
    steps = min(len(weight_loader), len(arch_loader))
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)

    model = SearchNetwork(
        num_classes,
        channels=config.channels,
        layers=config.layers,
        nodes=config.nodes,
        stem_multiplier=config.stem_multiplier,
        embedding_size=config.embedding_size,
        image_size=config.image_size,
        fused=config.fused_cells,
    )
    w_optimizer = torch.optim.SGD(
        model.weights(),
        lr=config.w_lr,
        momentum=config.w_momentum,
        weight_decay=config.w_weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_optimizer, T_max=config.epochs, eta_min=config.w_lr_min
    )
    a_optimizer = torch.optim.Adam(
        model.alphas(),
        lr=config.alpha_lr,
        betas=(config.alpha_beta1, config.alpha_beta2),
        weight_decay=config.alpha_weight_decay,
    )
    architect = Architect(
        model,
        a_optimizer,
        config.order,
        config.w_momentum,
        config.w_weight_decay,
        arch_gradient=config.arch_gradient,
    )

    start_epoch = 0
    if resuming:
        state = load_checkpoint(run.last_checkpoint)
        start_epoch = _restore(
            state, run.last_checkpoint, config, model, w_optimizer, a_optimizer, scheduler
        )
        run.keep_metrics_until(start_epoch - 1)
        logger.info("resuming search from epoch %d of %d", start_epoch + 1, config.epochs)
    else:
        save_config(run.path / "config.yaml", config)

    (run.path / "genotypes").mkdir(exist_ok=True)
    (run.path / "alphas").mkdir(exist_ok=True)
    val_accuracy = float("nan")
    genotype = derive_genotype(
        model.alpha_normal, model.alpha_reduce, model.primitives, model.nodes
    )

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = float(scheduler.get_last_lr()[0])
        model.train()
        totals = {
            "train_loss": 0.0,
            "train_correct": 0,
            "val_loss": 0.0,
            "val_correct": 0,
            "seen": 0,
        }
        batches = zip(weight_loader, arch_loader, strict=False)
        progress = tqdm(
            total=steps,
            desc=f"search epoch {epoch + 1}/{config.epochs}",
            disable=not show_progress,
            unit="step",
            leave=False,
        )
        for step, (train_batch, val_batch) in enumerate(batches):
            if step >= steps:
                break
            train_batch = (resize_batch(train_batch[0], config.image_size), train_batch[1])
            val_batch = (resize_batch(val_batch[0], config.image_size), val_batch[1])

            # The metrics come from the forward passes that the step computes anyway.
            step_metrics = architect.search_step(
                train_batch, val_batch, xi=lr, w_optimizer=w_optimizer, grad_clip=config.grad_clip
            )
            loss, logits = step_metrics.train_loss, step_metrics.train_logits
            val_loss, val_logits = step_metrics.val_loss, step_metrics.val_logits
            targets = train_batch[1]

            n = len(targets)
            totals["train_loss"] += float(loss) * n
            totals["train_correct"] += int((logits.argmax(1) == targets).sum())
            totals["val_loss"] += float(val_loss) * n
            totals["val_correct"] += int((val_logits.argmax(1) == val_batch[1]).sum())
            totals["seen"] += n
            progress.set_postfix(loss=f"{float(loss):.3f}")
            progress.update()
        progress.close()
        scheduler.step()

        seen = max(totals["seen"], 1)
        val_accuracy = totals["val_correct"] / seen
        genotype = derive_genotype(
            model.alpha_normal, model.alpha_reduce, model.primitives, model.nodes
        )
        metrics = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": totals["train_loss"] / seen,
            "train_accuracy": totals["train_correct"] / seen,
            "val_loss": totals["val_loss"] / seen,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - started,
        }
        tag = f"epoch_{epoch + 1:03d}"
        atomic_write_text(run.path / "genotypes" / f"{tag}.json", genotype.to_json())
        atomic_write_json(run.path / "alphas" / f"{tag}.json", _alphas_document(model, epoch + 1))
        atomic_torch_save(
            run.last_checkpoint,
            _checkpoint(config, model, w_optimizer, a_optimizer, scheduler, epoch + 1, genotype),
        )
        run.log_metrics(metrics)
        logger.info(
            "search epoch %d/%d: train loss %.3f, val accuracy %.3f, genotype %s",
            epoch + 1,
            config.epochs,
            metrics["train_loss"],
            val_accuracy,
            genotype.to_text(),
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)

    atomic_write_text(run.path / "genotype.json", genotype.to_json())
    return SearchResult(
        genotype=genotype, run_dir=run.path, epochs=config.epochs, val_accuracy=val_accuracy
    )


def _checkpoint(
    config: SearchConfig,
    model: SearchNetwork,
    w_optimizer: torch.optim.Optimizer,
    a_optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    genotype: Genotype,
) -> dict[str, Any]:
    return {
        "kind": "search",
        "epoch": epoch,
        "config": to_dict(config),
        "model": model.state_dict(),
        "w_optimizer": w_optimizer.state_dict(),
        "a_optimizer": a_optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "alpha_normal": model.alpha_normal.detach().clone(),
        "alpha_reduce": model.alpha_reduce.detach().clone(),
        "primitives": list(model.primitives),
        "nodes": model.nodes,
        "genotype": genotype.to_dict(),
        "rng": rng_state(),
    }


def _restore(
    state: Any,
    path: Path,
    config: SearchConfig,
    model: SearchNetwork,
    w_optimizer: torch.optim.Optimizer,
    a_optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> int:
    if not isinstance(state, dict) or state.get("kind") != "search":
        raise CheckpointError(f"{path}: not a pocketnas search checkpoint")
    try:
        model.load_state_dict(state["model"])
        w_optimizer.load_state_dict(state["w_optimizer"])
        a_optimizer.load_state_dict(state["a_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return int(state["epoch"])
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: checkpoint does not fit this search configuration ({first})"
        ) from None
