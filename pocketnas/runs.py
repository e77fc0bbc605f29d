"""Run folders: resolved config, metrics.csv, checkpoints, genotypes, plots and a log file.

A run folder is created by the first run and reused only with `resume=True`, so a finished run is
never overwritten by accident. Metrics are rewritten atomically after every epoch, and rows past the
resumed checkpoint are dropped, so `metrics.csv` always agrees with `checkpoints/last.pt`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pocketnas.data.dataset import collate_faces
from pocketnas.errors import PocketNasError
from pocketnas.fileio import atomic_write_text

logger = logging.getLogger(__name__)


class RunFolder:
    """The output folder of one search or retraining run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.metrics_path = self.path / "metrics.csv"
        self._rows: list[dict[str, Any]] = []
        self._log_handler: logging.Handler | None = None

    def prepare(self, resume: bool) -> bool:
        """Create the folder; return True when an earlier run should be resumed.

        Raises:
            PocketNasError: the parent folder is missing, or the folder already contains a run and
                `resume` is False.
        """
        parent = self.path.parent
        if not parent.is_dir():
            raise PocketNasError(f"{self.path}: parent folder {parent} does not exist")
        has_checkpoint = self.last_checkpoint.is_file()
        if self.path.exists() and any(self.path.iterdir()) and not resume:
            raise PocketNasError(
                f"{self.path}: folder is not empty; pass --resume to continue the run in it, "
                "or choose a new folder"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if resume and has_checkpoint:
            self._rows = self._read_metrics()
            return True
        return False

    def attach_log(self) -> None:
        """Copy pocketnas's log records into `log.txt` of the run folder."""
        handler = logging.FileHandler(self.path / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("pocketnas").addHandler(handler)
        self._log_handler = handler

    def detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("pocketnas").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _read_metrics(self) -> list[dict[str, Any]]:
        return CsvLog(self.metrics_path).rows

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop metric rows of epochs after `epoch` (work lost by an interruption)."""
        self._rows = [row for row in self._rows if int(row["epoch"]) <= epoch]

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """Return the metrics row of `epoch` with numbers parsed, or {} when there is none."""
        for row in reversed(self._rows):
            if int(row["epoch"]) == epoch:
                return {key: _parse_value(value) for key, value in row.items()}
        return {}

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append a row and rewrite metrics.csv atomically."""
        self._rows.append(row)
        write_csv(self.metrics_path, self._rows)


class CsvLog:
    """A CSV file of rows that is rewritten atomically after each appended row.

    Rows read back from an existing file hold strings; the union of all rows' keys is the header.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as handle:
                self.rows = list(csv.DictReader(handle))

    def keep(self, column: str, last: float) -> None:
        """Drop the rows whose `column` is above `last` (work lost by an interruption)."""
        self.rows = [row for row in self.rows if float(row[column]) <= last]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        write_csv(self.path, self.rows)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` (the union of their keys as the header) to `path` atomically."""
    fields: list[str] = []
    for existing in rows:
        fields.extend(k for k in existing if k not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for existing in rows:
        writer.writerow({k: _format_value(v) for k, v in existing.items()})
    atomic_write_text(path, buffer.getvalue())


def _format_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _parse_value(text: str) -> Any:
    """Read back a value that `write_csv` wrote: an int, a float, or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture the random number generator states as tensors and numbers (no pickled objects)."""
    version, python_state, gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state(legacy=True)
    return {
        "python_version": version,
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
        "numpy_pos": int(numpy_pos),
        "numpy_has_gauss": int(numpy_has_gauss),
        "numpy_gauss": float(numpy_gauss),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by `rng_state`."""
    random.setstate(
        (state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"])
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])


def training_loader(dataset: Any, batch_size: int, workers: int, seed: int) -> DataLoader:
    """Shuffle with a seeded generator and drop the last partial batch (BatchNorm needs > 1).

    `collate_faces` takes the face datasets' ready batches without a copy and stacks the samples
    of any other dataset as torch's default collate does.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        collate_fn=collate_faces,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
    )


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of square images to `size` pixels if it has another size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
