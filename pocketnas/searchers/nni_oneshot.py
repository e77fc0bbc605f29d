"""Cell search with NNI 3.0's one-shot strategies: DARTS, GumbelDARTS and Proxyless.

The strategies search `FaceModelSpace`, which has the cells, operations and network parts of the
native supernet, on the same stratified 50/50 split of the data. Each step updates the choice
weights on a batch of the architecture half and then the network weights on a batch of the weight
half. The choice weights use Adam at the preset's `alpha_lr`; NNI 3.0 fixes its betas at
(0.5, 0.999) and its weight decay at 1e-3. The network weights use SGD with the preset's rate
(cosine annealed per epoch), momentum, weight decay and gradient clip. Every strategy is first
order. Unlike the native supernet, a node mixes its edges with the softmax of its input choice's
weights instead of summing them.

After every epoch the run folder gets the files of a native search: `genotypes/epoch_NNN.json`,
`alphas/epoch_NNN.json` (choice probabilities) and a row of `metrics.csv`. At the end it gets
`genotype.json`. The genotype takes the operation with the largest weight on each edge and the
`EDGES_PER_NODE` inputs with the largest weights on each node, for every strategy. NNI's own export
of Proxyless draws a random sample instead. Runs cannot be resumed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from pocketnas.config import SearchConfig, save_config
from pocketnas.data.dataset import FaceRecordDataset, collate_faces
from pocketnas.errors import ConfigError, PocketNasError
from pocketnas.experiments.nni_support import import_nni
from pocketnas.fileio import atomic_write_json, atomic_write_text
from pocketnas.runs import RunFolder, resize_batch, seed_everything
from pocketnas.search_space.choices import (
    CELL_TYPES,
    EDGES_PER_NODE,
    candidate_operations,
    genotype_from_sample,
    inputs_label,
    operation_label,
)
from pocketnas.search_space.genotype import Genotype
from pocketnas.searchers.search import EpochCallback, SearchResult, search_halves

logger = logging.getLogger(__name__)

NNI_SEARCHERS = ("nni-darts", "nni-gumbel", "nni-proxyless")
"""`pocketnas search --searcher` values that run an NNI strategy."""


class ArchitectureBatch(tuple):
    """A batch of the architecture half; the training step recognises it by this type."""


def _collate_architecture_batch(samples: Any) -> ArchitectureBatch:
    return ArchitectureBatch(collate_faces(samples))


def run_nni_search(
    searcher: str,
    config: SearchConfig,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    show_progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> SearchResult:
    """Search a cell genotype with the NNI strategy `searcher` (one of `NNI_SEARCHERS`).

    `config.order` must be "first" and `config.arch_gradient` "darts", because NNI's strategies
    compute only the first-order gradient of the validation loss.

    Raises:
        PocketNasError: NNI is not installed, the settings do not apply to NNI's strategies, the
            data is bad, or the run folder is not empty.
    """
    if searcher not in NNI_SEARCHERS:
        raise ConfigError(f"unknown NNI searcher {searcher!r}; valid: {', '.join(NNI_SEARCHERS)}")
    config.validate()
    if config.order != "first":
        raise ConfigError(
            f"--searcher {searcher} computes first-order gradients only; use --order first or "
            "--searcher darts"
        )
    if config.arch_gradient != "darts":
        raise ConfigError(f"--searcher {searcher} supports only --arch-gradient darts")
    import_nni(f"--searcher {searcher}")
    nni_adam = {"alpha_beta1": 0.5, "alpha_beta2": 0.999, "alpha_weight_decay": 1e-3}
    for name, value in nni_adam.items():
        if getattr(config, name) != value:
            logger.warning(
                "%s is %s, but NNI's strategies fix it at %s for the choice weights' Adam",
                name,
                getattr(config, name),
                value,
            )

    dataset = FaceRecordDataset(data_dir, train=True)
    # Split before the run folder is made, so that bad data leaves no folder behind.
    halves = search_halves(dataset, config.seed)
    run = RunFolder(out_dir)
    run.prepare(resume=False)
    run.attach_log()
    try:
        with _quiet_libraries():
            return _search(searcher, config, dataset, halves, run, show_progress, on_epoch_end)
    finally:
        run.detach_log()


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hide messages of NNI and pytorch-lightning that do not apply to these searches.

    - NNI warns that validation loaders are missing, because its strategies move the architecture
      half into the training loop;
    - pytorch-lightning logs the devices it found at INFO level;
    - pytorch-lightning 2.6 warns about a torch pytree class it still uses.
    """
    nni_logger = logging.getLogger("nni.nas.evaluator.pytorch.lightning")
    drop = _DropMessage("Validation dataloaders are missing")
    nni_logger.addFilter(drop)
    lightning_loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning")]
    levels = [lightning_logger.level for lightning_logger in lightning_loggers]
    for lightning_logger in lightning_loggers:
        lightning_logger.setLevel(max(lightning_logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        nni_logger.removeFilter(drop)
        for lightning_logger, level in zip(lightning_loggers, levels, strict=True):
            lightning_logger.setLevel(level)


def _strategy(searcher: str, config: SearchConfig) -> Any:
    from nni.nas.strategy import DARTS, GumbelDARTS, Proxyless

    options = {"arc_learning_rate": config.alpha_lr, "gradient_clip_val": config.grad_clip or None}
    if searcher == "nni-darts":
        return DARTS(**options)
    if searcher == "nni-gumbel":
        return GumbelDARTS(**options)
    return Proxyless(**options)


def _half_loaders(
    dataset: FaceRecordDataset, config: SearchConfig, weight_idx: np.ndarray, arch_idx: np.ndarray
) -> list[Any]:
    """Return shuffled loaders of the weight half and of the architecture half.

    They are NNI's traced DataLoader, which NNI's Lightning evaluator expects. The architecture
    half's batches are `ArchitectureBatch` tuples.
    """
    from nni.nas.evaluator.pytorch import DataLoader

    loaders = []
    for seed, indices, collate in (
        (config.seed, weight_idx, collate_faces),
        (config.seed + 1, arch_idx, _collate_architecture_batch),
    ):
        generator = torch.Generator()
        generator.manual_seed(seed)
        loaders.append(
            DataLoader(
                Subset(dataset, indices.tolist()),
                batch_size=min(config.batch_size, len(indices)),
                shuffle=True,
                drop_last=True,
                collate_fn=collate,
                num_workers=config.workers,
                generator=generator,
                persistent_workers=config.workers > 0,
            )
        )
    return loaders


def _search(
    searcher: str,
    config: SearchConfig,
    dataset: FaceRecordDataset,
    halves: tuple[np.ndarray, np.ndarray],
    run: RunFolder,
    show_progress: bool,
    on_epoch_end: EpochCallback | None,
) -> SearchResult:
    from nni.nas.evaluator.pytorch import Lightning, Trainer
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

    from pocketnas.searchers.nni_space import FaceModelSpace

    seed_everything(config.seed)
    labels = np.asarray(dataset.record_set.labels)
    num_classes = int(dataset.num_classes)
    logger.info(
        "searching with %s on %d images of %d identities from %s",
        searcher,
        len(labels),
        num_classes,
        dataset.record_set.folder,
    )
    weight_idx, arch_idx = halves
    loaders = _half_loaders(dataset, config, weight_idx, arch_idx)
    steps = min(len(loaders[0]), len(loaders[1]))
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)

    operations = candidate_operations()
    space = FaceModelSpace(
        num_classes,
        channels=config.channels,
        layers=config.layers,
        nodes=config.nodes,
        stem_multiplier=config.stem_multiplier,
        embedding_size=config.embedding_size,
        image_size=config.image_size,
        operations=operations,
    )
    save_config(run.path / "config.yaml", config)
    (run.path / "genotypes").mkdir(exist_ok=True)
    (run.path / "alphas").mkdir(exist_ok=True)

    module = _training_module_class()(config)
    recorder = _recorder_class()(searcher, config, run, operations, on_epoch_end)
    trainer = Trainer(
        max_epochs=config.epochs,
        limit_train_batches=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run.path),
        callbacks=[recorder],
    )
    evaluator = Lightning(module, trainer, train_dataloaders=loaders[0], val_dataloaders=loaders[1])
    strategy = _strategy(searcher, config)
    strategy.initialize(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    strategy.run()

    if recorder.genotype is None:
        raise PocketNasError(f"{searcher} finished without completing an epoch")
    atomic_write_text(run.path / "genotype.json", recorder.genotype.to_json())
    # NNI's strategies cannot resume, so the checkpoints folder that RunFolder made stays empty.
    with contextlib.suppress(OSError):
        run.checkpoints.rmdir()
    return SearchResult(
        genotype=recorder.genotype,
        run_dir=run.path,
        epochs=config.epochs,
        val_accuracy=recorder.val_accuracy,
    )


def choice_weights(supernet: torch.nn.Module) -> dict[str, dict[Any, float]]:
    """Return the softmax of each choice's weights, by label: {label: {candidate: probability}}.

    `supernet` is a model space that a strategy has turned into a supernet, or a module that
    contains one. The weights are read directly instead of through NNI's `export_probs`, which
    applies the strategy's softmax, and GumbelDARTS's softmax adds random noise.
    """
    from nni.nas.oneshot.pytorch.supermodule.differentiable import (
        DifferentiableMixedInput,
        DifferentiableMixedLayer,
    )

    weights: dict[str, dict[Any, float]] = {}
    for module in supernet.modules():
        if not isinstance(module, (DifferentiableMixedLayer, DifferentiableMixedInput)):
            continue
        if module.label in weights:
            continue
        # NOTE: `_arch_alpha` is where NNI 3.0's differentiable and Proxyless choices keep their
        # weights; it is not part of NNI's documented interface.
        probabilities = torch.softmax(module._arch_alpha.detach().float().cpu(), dim=-1).tolist()
        if isinstance(module, DifferentiableMixedLayer):
            weights[module.label] = dict(zip(module.names, probabilities, strict=True))
        else:
            weights[module.label] = dict(enumerate(probabilities))
    return weights


def sample_from_weights(weights: dict[str, dict[Any, float]], nodes: int) -> dict[str, Any]:
    """Pick the most probable operation per edge and the most probable inputs per node.

    Ties go to the earlier candidate.
    """
    sample: dict[str, Any] = {}
    for cell in CELL_TYPES:
        for node in range(nodes):
            label = inputs_label(cell, node)
            ranked = sorted(weights[label].items(), key=lambda item: (-item[1], item[0]))
            sample[label] = sorted(int(source) for source, _ in ranked[:EDGES_PER_NODE])
            for source in range(node + 2):
                label = operation_label(cell, node, source)
                candidates = list(weights[label].items())
                best = max(range(len(candidates)), key=lambda i: (candidates[i][1], -i))
                sample[label] = candidates[best][0]
    return sample


def cosine_learning_rate(config: SearchConfig, epoch: int) -> float:
    """Return the weight learning rate of 0-based `epoch`, as `CosineAnnealingLR` sets it."""
    progress = math.cos(math.pi * epoch / config.epochs)
    return config.w_lr_min + (config.w_lr - config.w_lr_min) * (1 + progress) / 2


def _training_module_class() -> type:
    """Define the Lightning module here, because its base class comes from NNI."""
    from nni.nas.evaluator.pytorch import LightningModule

    class SearchTrainingModule(LightningModule):
        """Cross-entropy training of the supernet; counts loss and accuracy of both halves."""

        def __init__(self, config: SearchConfig) -> None:
            super().__init__()
            self.config = config
            self.totals: dict[str, float] = {}
            self.reset_totals()

        def reset_totals(self) -> None:
            self.totals = {
                "train_loss": 0.0,
                "train_correct": 0.0,
                "train_seen": 0.0,
                "val_loss": 0.0,
                "val_correct": 0.0,
                "val_seen": 0.0,
            }

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            images = resize_batch(batch[0], self.config.image_size)
            labels = batch[1]
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            half = "val" if isinstance(batch, ArchitectureBatch) else "train"
            count = len(labels)
            self.totals[f"{half}_loss"] += float(loss.detach()) * count
            self.totals[f"{half}_correct"] += float((logits.argmax(1) == labels).sum())
            self.totals[f"{half}_seen"] += count
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            # NNI's strategies remove the choice weights from this optimizer and give them to
            # their own Adam.
            return torch.optim.SGD(
                self.model.parameters(),
                lr=self.config.w_lr,
                momentum=self.config.w_momentum,
                weight_decay=self.config.w_weight_decay,
            )

    return SearchTrainingModule


def _recorder_class() -> type:
    """Define the epoch recorder here, because its base class comes from pytorch-lightning."""
    from pytorch_lightning import Callback

    class EpochRecorder(Callback):
        """Sets the learning rate of each epoch and writes the run folder's files after it."""

        def __init__(
            self,
            searcher: str,
            config: SearchConfig,
            run: RunFolder,
            operations: tuple[str, ...],
            on_epoch_end: EpochCallback | None,
        ) -> None:
            self.searcher = searcher
            self.config = config
            self.run = run
            self.operations = operations
            self.on_epoch_end = on_epoch_end
            self.genotype: Genotype | None = None
            self.val_accuracy = float("nan")
            self.started = 0.0
            self.lr = config.w_lr

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.started = time.perf_counter()
            self.lr = cosine_learning_rate(self.config, trainer.current_epoch)
            for optimizer in trainer.optimizers:
                if not getattr(optimizer, "is_arch_optimizer", False):
                    for group in optimizer.param_groups:
                        group["lr"] = self.lr
            pl_module.training_module.reset_totals()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            epoch = trainer.current_epoch + 1
            totals = pl_module.training_module.totals
            train_seen = max(totals["train_seen"], 1.0)
            val_seen = totals["val_seen"]
            self.val_accuracy = totals["val_correct"] / val_seen if val_seen else float("nan")
            weights = choice_weights(pl_module)
            self.genotype = genotype_from_sample(
                sample_from_weights(weights, self.config.nodes), self.config.nodes
            )
            metrics = {
                "epoch": epoch,
                "lr": self.lr,
                "train_loss": totals["train_loss"] / train_seen,
                "train_accuracy": totals["train_correct"] / train_seen,
                "val_loss": totals["val_loss"] / val_seen if val_seen else float("nan"),
                "val_accuracy": self.val_accuracy,
                "seconds": time.perf_counter() - self.started,
            }
            self._write_epoch(epoch, self.genotype, weights, metrics)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, metrics)

        def _write_epoch(
            self,
            epoch: int,
            genotype: Genotype,
            weights: dict[str, dict[Any, float]],
            metrics: dict[str, Any],
        ) -> None:
            tag = f"epoch_{epoch:03d}"
            atomic_write_text(self.run.path / "genotypes" / f"{tag}.json", genotype.to_json())
            atomic_write_json(
                self.run.path / "alphas" / f"{tag}.json",
                {
                    "epoch": epoch,
                    "searcher": self.searcher,
                    "operations": list(self.operations),
                    "nodes": self.config.nodes,
                    "choices": {
                        label: {str(key): value for key, value in probabilities.items()}
                        for label, probabilities in weights.items()
                    },
                },
            )
            self.run.log_metrics(metrics)
            logger.info(
                "%s epoch %d/%d: train loss %.3f, val accuracy %.3f, genotype %s",
                self.searcher,
                epoch,
                self.config.epochs,
                metrics["train_loss"],
                metrics["val_accuracy"],
                genotype.to_text(),
            )

    return EpochRecorder
