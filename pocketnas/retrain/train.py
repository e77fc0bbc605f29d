"""Retraining from scratch with a margin head, optional distillation, on one or many processes.

The defaults are PocketNet's: SGD with momentum 0.9 and weight decay 5e-4, the learning rate scaled
linearly with the global batch (`lr * batch * processes / lr_reference_batch`), divided by 10 at
the milestone epochs, and gradient-norm clipping at 5. The run folder gets:

- `checkpoints/last.pt`: everything needed to continue to the exact step (network, head,
  optimiser, gradient scaler, step, the epoch's running sums, best accuracy, RNG states), written
  at each epoch's end and every `checkpoint_every_steps` steps;
- `checkpoints/epoch_NNN.pt`: the network alone after each epoch, the teacher checkpoints that
  multi-step distillation reads;
- `checkpoints/best.pt` when the mean verification accuracy improves;
- `metrics.csv` (one row per epoch), `verification.csv` (one row per verification), TensorBoard
  events in `tensorboard/`, `config.yaml` and `log.txt`.

Batches come from `EpochBatchSampler`, whose order and flips depend only on the seed and the
epoch, so a resumed run (even one killed mid-epoch) computes the same steps as an uninterrupted
one. Under `torchrun` every process trains its share of each global batch, gradients are averaged
by DistributedDataParallel, and only rank 0 writes files and evaluates.

The step loop does not wait for the device except every `log_every_steps` steps, when the loss
is read (and checked: a NaN or infinite loss stops the run, keeping the last good checkpoint).
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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pocketnas.config import RetrainConfig, save_config, to_dict
from pocketnas.data.dataset import FaceRecordDataset, collate_faces, normalize_batch
from pocketnas.data.samplers import EpochBatchSampler
from pocketnas.errors import CheckpointError, ConfigError, PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet, verify
from pocketnas.fileio import atomic_torch_save, load_checkpoint
from pocketnas.retrain.distill import (
    TeacherSchedule,
    distillation_loss,
    epoch_checkpoint_name,
    inspect_teacher,
    multi_step_files,
    template_file,
)
from pocketnas.retrain.distributed import Distributed, start_distributed, stop_distributed
from pocketnas.retrain.heads import CombinedMarginHead, build_head
from pocketnas.retrain.models import build_network, config_genotype, network_spec
from pocketnas.retrain.schedule import base_learning_rate, lr_factor
from pocketnas.runs import (
    CsvLog,
    RunFolder,
    resize_batch,
    rng_state,
    seed_everything,
    set_rng_state,
)
from pocketnas.search_space.genotype import Genotype

__all__ = [
    "RetrainResult",
    "build_network",
    "config_genotype",
    "network_spec",
    "run_retrain",
    "train_step",
]

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]
StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class RetrainResult:
    """Paths and final metrics of a finished retraining, and the trained network."""

    run_dir: Path
    checkpoint: Path
    best_checkpoint: Path | None
    # The last epoch's metrics. A resumed run with no epoch left reads them back from
    # metrics.csv, where floats keep 6 significant digits.
    metrics: dict[str, Any]
    model: nn.Module
    step: int


class _Student(nn.Module):
    """The network and its margin head as one module, so that DDP averages both gradients."""

    def __init__(self, network: nn.Module, head: CombinedMarginHead) -> None:
        super().__init__()
        self.network = network
        self.head = head

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.network(images)
        return embeddings, self.head(embeddings, labels)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Return the compute dtype of `precision` ("auto", "fp32", "bf16", "fp16") on `device`.

    Raises:
        ConfigError: fp16 is asked for on the CPU, or bf16 on a GPU without it.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bfloat16; use precision fp16")
        return torch.bfloat16
    return torch.float32


def train_step(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    grad_clip: float,
    dtype: torch.dtype,
    teacher: nn.Module | None = None,
    kd_weight: float = 0.0,
    teacher_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the margin loss and the distillation loss (detached).

    `student(images, labels)` returns (embeddings, logits); `images` are normalised floats on the
    device. The teacher, if any, gets the same images (resized to `teacher_size`).
    """
    device_type = images.device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        embeddings, logits = student(images, labels)
        margin_loss = F.cross_entropy(logits, labels)
        loss = margin_loss
        kd_loss = torch.zeros((), device=images.device)
        if teacher is not None:
            with torch.no_grad():
                teacher_input = images
                if teacher_size is not None:
                    teacher_input = resize_batch(images, teacher_size)
                target = teacher(teacher_input)
            kd_loss = distillation_loss(embeddings, target, kd_weight)
            loss = loss + kd_loss
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    return margin_loss.detach(), kd_loss.detach()


def run_retrain(
    config: RetrainConfig,
    genotype: Genotype | None,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    verification_bins: Sequence[str | os.PathLike[str]] = (),
    resume: bool = False,
    show_progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    on_step_end: StepCallback | None = None,
) -> RetrainResult:
    """Train the network of `config.arch` (the derived network of `genotype`, or an IResNet).

    Under torchrun the process group is joined here and left at the end.

    Raises:
        PocketNasError: bad data, verification or teacher files, an occupied run folder without
            `resume`, a checkpoint that does not fit, or a non-finite loss.
    """
    config.validate()
    spec = network_spec(genotype, config)
    dataset = FaceRecordDataset(data_dir, train=True, normalize=False)
    sets = [VerificationSet.load(path, config.image_size) for path in verification_bins]
    context = start_distributed(config.device)
    try:
        teachers = _check_teachers(config, context)
        run = RunFolder(out_dir)
        resuming = resume and run.last_checkpoint.is_file()
        if context.is_main:
            run.prepare(resume)
            run.attach_log()
        try:
            trainer = _Trainer(config, spec, dataset, sets, run, context, teachers, show_progress)
            return trainer.fit(resuming, on_epoch_end, on_step_end)
        finally:
            run.detach_log()
            dataset.close()
    finally:
        stop_distributed(context)


def _check_teachers(config: RetrainConfig, context: Distributed) -> TeacherSchedule | None:
    """Check every teacher checkpoint the run needs, before anything is trained."""
    if config.kd == "none":
        return None
    assert config.teacher is not None  # validate() checked it
    if config.kd == "template":
        path = template_file(config.teacher)
        files = [inspect_teacher(path, config.embedding_size, config.teacher_arch)]
    else:
        files = multi_step_files(config.teacher, config.epochs, config.embedding_size)
    logger.info("distillation (%s) from %d teacher checkpoint(s)", config.kd, len(files))
    return TeacherSchedule(files, config.kd == "multi-step", context.device)


class _Trainer:
    def __init__(
        self,
        config: RetrainConfig,
        spec: dict[str, Any],
        dataset: FaceRecordDataset,
        sets: list[VerificationSet],
        run: RunFolder,
        context: Distributed,
        teachers: TeacherSchedule | None,
        show_progress: bool,
    ) -> None:
        self.config = config
        self.spec = spec
        self.dataset = dataset
        self.sets = sets
        self.run = run
        self.context = context
        self.teachers = teachers
        self.show_progress = show_progress and context.is_main
        self.device = context.device
        self.dtype = autocast_dtype(config.precision, self.device)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        seed_everything(config.seed)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = build_network(spec).to(self.device)
        self.model = self.model.to(memory_format=memory_format)  # type: ignore[call-overload]
        margins = config.combined_margins
        self.head = build_head(
            config.head,
            config.embedding_size,
            int(dataset.num_classes),
            config.margin_s,
            config.margin_m,
            (float(margins[0]), float(margins[1]), float(margins[2])),
            config.easy_margin,
        ).to(self.device)
        self.student: nn.Module = _Student(self.model, self.head)
        if context.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.student = DistributedDataParallel(self.student, device_ids=device_ids)
        self.parameters = [p for p in self.student.parameters() if p.requires_grad]
        self.base_lr = base_learning_rate(config, context.world_size)
        self.optimizer = torch.optim.SGD(
            self.parameters,
            lr=self.base_lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            foreach=True,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

        self.sampler = EpochBatchSampler(
            len(dataset),
            config.batch_size,
            seed=config.seed,
            num_replicas=context.world_size,
            rank=context.rank,
            max_batches=config.steps_per_epoch,
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = self.steps_per_epoch * config.epochs
        self.loader = DataLoader(
            dataset,
            # DataLoader hands each BatchPlan to the dataset's __getitems__ unchanged.
            batch_sampler=self.sampler,  # type: ignore[arg-type]
            collate_fn=collate_faces,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.workers > 0,
        )

        # Progress that a checkpoint carries, so that a resumed run continues to the exact step.
        self.step = 0
        self.best_accuracy = -math.inf
        self.epoch_loss = torch.zeros((), device=self.device)
        self.epoch_kd = torch.zeros((), device=self.device)
        self.epoch_seconds = 0.0
        self.last_good_step = 0
        self.metrics: dict[str, Any] = {}
        self.writer: Any = None
        self.verification_log: CsvLog | None = None

    # Checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "kind": "retrain",
            "format": 2,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.context.world_size,
            "config": to_dict(self.config),
            "network": self.spec,
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch_loss": self.epoch_loss.detach().cpu(),
            "epoch_kd": self.epoch_kd.detach().cpu(),
            "epoch_seconds": self.epoch_seconds,
            "best_accuracy": self.best_accuracy,
            "rng": rng_state(),
        }

    def _save(self, path: Path, state: dict[str, Any] | None = None) -> None:
        if self.context.is_main:
            atomic_torch_save(path, state if state is not None else self._state())

    def _restore(self) -> None:
        path = self.run.last_checkpoint
        state = load_checkpoint(path)
        resumable = isinstance(state, dict) and state.get("kind") == "retrain"
        if not resumable or "optimizer" not in state:
            raise CheckpointError(f"{path}: not a pocketnas retraining checkpoint to resume")
        try:
            saved_steps = int(state.get("steps_per_epoch", self.steps_per_epoch))
            if saved_steps != self.steps_per_epoch:
                raise CheckpointError(
                    f"{path}: written with {saved_steps} steps per epoch, but this run has "
                    f"{self.steps_per_epoch} (another batch size, process count or data set)"
                )
            self.model.load_state_dict(state["model"])
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            self.step = int(state.get("step", int(state["epoch"]) * self.steps_per_epoch))
            self.best_accuracy = float(state["best_accuracy"])
            self.epoch_loss = state.get("epoch_loss", torch.zeros(())).to(self.device)
            self.epoch_kd = state.get("epoch_kd", torch.zeros(())).to(self.device)
            self.epoch_seconds = float(state.get("epoch_seconds", 0.0))
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0]
            raise CheckpointError(
                f"{path}: checkpoint does not fit this retraining configuration ({first})"
            ) from None
        self.last_good_step = self.step

    # Logging and evaluation

    def _open_logs(self, resuming: bool) -> None:
        if not self.context.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(self.run.path / "tensorboard"), purge_step=self.step if resuming else None
        )
        self.verification_log = CsvLog(self.run.path / "verification.csv")
        self.verification_log.keep("step", self.step)

    def _close_logs(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _check_finite(self, value: float, first_step: int) -> None:
        if math.isfinite(value):
            return
        raise PocketNasError(
            f"training loss became {value} between steps {first_step + 1} and {self.step} "
            f"(epoch {self.step // self.steps_per_epoch + 1}); training stopped. The last good "
            f"checkpoint is {self.run.last_checkpoint} (step {self.last_good_step}); lower the "
            "learning rate or the margin, or check the data"
        )

    def _verify(self) -> dict[str, float]:
        """Evaluate on every verification set (rank 0); keep best.pt when the mean improves."""
        if not self.sets or not self.context.is_main:
            return {}
        results: dict[str, float] = {}
        accuracies = []
        for verification_set in self.sets:
            result = verify(self.model, verification_set, device=self.device)
            results[f"{verification_set.name}_accuracy"] = result.accuracy
            results[f"{verification_set.name}_accuracy_std"] = result.accuracy_std
            accuracies.append(result.accuracy)
            if self.writer is not None:
                self.writer.add_scalar(
                    f"verification/{verification_set.name}", result.accuracy, self.step
                )
        mean = sum(accuracies) / len(accuracies)
        improved = mean > self.best_accuracy
        if improved:
            self.best_accuracy = mean
        row = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), **results}
        assert self.verification_log is not None
        self.verification_log.append(row)
        if improved:
            self._save(self.run.checkpoints / "best.pt")
        self.model.train()
        return results

    # Training

    def fit(
        self,
        resuming: bool,
        on_epoch_end: EpochCallback | None,
        on_step_end: StepCallback | None,
    ) -> RetrainResult:
        config = self.config
        logger.info(
            "retraining %s on %d images of %d identities from %s, %d step(s) per epoch, "
            "%d process(es), lr %.4g, %s",
            self.spec["arch"],
            len(self.dataset),
            self.dataset.num_classes,
            self.dataset.record_set.folder,
            self.steps_per_epoch,
            self.context.world_size,
            self.base_lr,
            str(self.dtype).removeprefix("torch."),
        )
        if resuming:
            self._restore()
            self.run.keep_metrics_until(self.step // self.steps_per_epoch)
            if self.step % self.steps_per_epoch == 0:
                # The metrics of the last finished epoch, so that resuming a run that had
                # already finished still returns its final metrics.
                self.metrics = self.run.epoch_metrics(self.step // self.steps_per_epoch)
            logger.info("resuming retraining at step %d of %d", self.step, self.total_steps)
        elif self.context.is_main:
            save_config(self.run.path / "config.yaml", config)
        self._open_logs(resuming)
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="retrain",
            disable=not self.show_progress,
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.step < self.total_steps:
                self._train_epoch(progress, on_step_end)
                if on_epoch_end is not None:
                    on_epoch_end(self.step // self.steps_per_epoch, self.metrics)
        finally:
            progress.close()
            self._close_logs()
        best = self.run.checkpoints / "best.pt"
        return RetrainResult(
            run_dir=self.run.path,
            checkpoint=self.run.last_checkpoint,
            best_checkpoint=best if best.is_file() else None,
            metrics=self.metrics,
            model=self.model,
            step=self.step,
        )

    def _train_epoch(self, progress: Any, on_step_end: StepCallback | None) -> None:
        config = self.config
        epoch, start = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, start)
        teacher = self.teachers.for_epoch(epoch) if self.teachers is not None else None
        teacher_size = None
        if self.teachers is not None and self.teachers.image_size != config.image_size:
            teacher_size = self.teachers.image_size
        self.student.train()
        window_loss = torch.zeros((), device=self.device)
        window_start, window_time = self.step, time.perf_counter()
        epoch_started = time.perf_counter() - self.epoch_seconds
        for images, labels in self.loader:
            lr = self.base_lr * lr_factor(config, self.step / self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = normalize_batch(images.to(self.device, non_blocking=True))
            images = resize_batch(images, config.image_size)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            margin_loss, kd_loss = train_step(
                self.student,
                self.optimizer,
                self.scaler,
                images,
                labels,
                self.parameters,
                config.grad_clip,
                self.dtype,
                teacher,
                config.kd_weight,
                teacher_size,
            )
            total = margin_loss + kd_loss
            window_loss += total
            self.epoch_loss += total
            self.epoch_kd += kd_loss
            self.step += 1
            progress.update()

            at_epoch_end = self.step % self.steps_per_epoch == 0
            if self.step % config.log_every_steps == 0 or at_epoch_end:
                window_steps = self.step - window_start
                loss_value = float(window_loss) / window_steps
                self._check_finite(loss_value, window_start)
                now = time.perf_counter()
                speed = window_steps * len(labels) * self.context.world_size / (now - window_time)
                progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.4g}", img_s=f"{speed:.1f}")
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", loss_value, self.step)
                    self.writer.add_scalar("train/lr", lr, self.step)
                    self.writer.add_scalar("train/images_per_second", speed, self.step)
                window_loss.zero_()
                window_start, window_time = self.step, now
            if at_epoch_end:
                self.epoch_seconds = time.perf_counter() - epoch_started
                self._end_epoch(epoch, lr)
            else:
                evaluate = config.eval_every_steps and self.step % config.eval_every_steps == 0
                save = config.checkpoint_every_steps and (
                    self.step % config.checkpoint_every_steps == 0
                )
                if evaluate or save:
                    self._check_window(window_loss, window_start)
                    self.epoch_seconds = time.perf_counter() - epoch_started
                if evaluate:
                    self._verify()
                if save:
                    self._save(self.run.last_checkpoint)
                    self.last_good_step = self.step
            if on_step_end is not None:
                on_step_end(self.step)

    def _check_window(self, window_loss: torch.Tensor, window_start: int) -> None:
        """Check the loss since the last log before a checkpoint is written."""
        if self.step > window_start:
            self._check_finite(float(window_loss) / (self.step - window_start), window_start)

    def _end_epoch(self, epoch: int, lr: float) -> None:
        config = self.config
        seen = self.steps_per_epoch * config.batch_size * self.context.world_size
        epoch_loss, epoch_kd = float(self.epoch_loss), float(self.epoch_kd)
        if self.context.active:
            # Each rank summed its own losses; the row reports the mean over all of them.
            totals = torch.tensor([epoch_loss, epoch_kd], device=self.device)
            dist.all_reduce(totals)
            epoch_loss, epoch_kd = (float(v) / self.context.world_size for v in totals)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": lr,
            "train_loss": epoch_loss / self.steps_per_epoch,
        }
        if self.teachers is not None:
            metrics["kd_loss"] = epoch_kd / self.steps_per_epoch
        metrics["seconds"] = self.epoch_seconds
        metrics["images_per_second"] = seen / max(self.epoch_seconds, 1e-9)
        metrics.update(self._verify())
        self.epoch_loss.zero_()
        self.epoch_kd.zero_()
        self.epoch_seconds = 0.0
        state = self._state()
        self._save(self.run.last_checkpoint, state)
        self.last_good_step = self.step
        self._save(
            self.run.checkpoints / epoch_checkpoint_name(epoch + 1),
            {
                "kind": "retrain",
                "format": 2,
                "step": self.step,
                "epoch": epoch + 1,
                "config": state["config"],
                "network": self.spec,
                "model": state["model"],
            },
        )
        if self.context.is_main:
            self.run.log_metrics(metrics)
            if self.writer is not None:
                self.writer.add_scalar("epoch/train_loss", metrics["train_loss"], self.step)
                self.writer.flush()
        logger.info(
            "retrain epoch %d/%d: loss %.3f%s%s",
            epoch + 1,
            config.epochs,
            metrics["train_loss"],
            f" (distillation {metrics['kd_loss']:.3f})" if "kd_loss" in metrics else "",
            "".join(
                f", {s.name} {metrics[f'{s.name}_accuracy']:.4f}"
                for s in self.sets
                if f"{s.name}_accuracy" in metrics
            ),
        )
        self.metrics = metrics
