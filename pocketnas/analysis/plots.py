"""Figures of search and retraining runs, drawn with matplotlib's Agg renderer.

Every function builds a `matplotlib.figure.Figure` without pyplot, so no global figure state or
interactive backend is involved, and `save_figure` writes it as a PNG atomically. The animation
of the cells over the epochs is assembled from Graphviz renderings with Pillow.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pocketnas.analysis.published_results import (
    BENCHMARK_TITLES,
    PUBLISHED_MODELS,
    PUBLISHED_SOURCE,
)
from pocketnas.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

_DPI = 120
# Okabe-Ito colours, distinguishable with the common forms of colour blindness.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
# Widest frame of the cell animation in pixels; Graphviz renders at 150 dpi, which is larger.
_ANIMATION_WIDTH = 900
_FRAME_MILLISECONDS = 900


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `figure` as a PNG file atomically and return its path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _style(axes: Any, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)


def _integer_epochs(axes: Any, epochs: Sequence[int]) -> None:
    """Put ticks on whole epochs only, at most about ten of them."""
    step = max(1, math.ceil(len(epochs) / 10))
    axes.set_xticks(list(epochs)[::step])


def plot_training_curves(metrics: pd.DataFrame, title: str) -> Figure:
    """Draw loss, accuracy and learning rate per epoch from a run's `metrics.csv`.

    Columns used when present: `train_loss`, `val_loss`, `train_accuracy`, `val_accuracy`,
    `<set>_accuracy` with its `<set>_accuracy_std` band (verification sets of a retraining run)
    and `lr`. A search run's accuracies are classification accuracies on the weight half (train)
    and the architecture half (val) of its data.
    """
    epochs = metrics["epoch"].astype(int).tolist()
    figure = Figure(figsize=(15, 4.4), layout="constrained")
    loss_axes, accuracy_axes, lr_axes = figure.subplots(1, 3)
    figure.suptitle(title)

    for index, column in enumerate(("train_loss", "val_loss")):
        if column in metrics:
            loss_axes.plot(
                epochs,
                metrics[column],
                marker="o",
                color=_COLOURS[index],
                label=column.replace("_", " "),
            )
    _style(loss_axes, "Loss", "epoch", "loss")

    accuracy_columns = [
        column
        for column in metrics.columns
        if column.endswith("_accuracy") and not column.endswith("_std")
    ]
    for index, column in enumerate(accuracy_columns):
        values = metrics[column].astype(float)
        colour = _COLOURS[index % len(_COLOURS)]
        label = column.removesuffix("_accuracy").replace("_", " ")
        if column in ("train_accuracy", "val_accuracy"):
            label = f"{label} (classification)"
        else:
            label = f"{label} (10-fold verification, ± std)"
        accuracy_axes.plot(epochs, values, marker="o", color=colour, label=label)
        std_column = f"{column}_std"
        if std_column in metrics:
            std = metrics[std_column].astype(float)
            accuracy_axes.fill_between(epochs, values - std, values + std, color=colour, alpha=0.2)
    _style(accuracy_axes, "Accuracy", "epoch", "accuracy")

    if "lr" in metrics:
        lr_axes.plot(epochs, metrics["lr"], marker="o", color=_COLOURS[2], label="learning rate")
    _style(lr_axes, "Learning rate", "epoch", "learning rate")

    for axes in (loss_axes, accuracy_axes, lr_axes):
        _integer_epochs(axes, epochs)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    return figure


def _input_name(index: int) -> str:
    """Name cell input `index` like the cell diagrams: c_{k-2}, c_{k-1}, then node numbers."""
    return ("c_{k-2}", "c_{k-1}")[index] if index < 2 else f"node {index - 2}"


def plot_alpha_heatmaps(documents: Sequence[Mapping[str, Any]], cell: str, title: str) -> Figure:
    """Draw the softmaxed architecture weights of one cell type over the epochs.

    Each panel is one edge of the cell (row: the node it enters, column: its input); inside a
    panel, rows are operations and columns epochs. All panels share one colour scale, spanning
    the smallest to the largest weight, so that small changes early in a search stay visible.

    Args:
        documents: The `alphas/epoch_NNN.json` documents of a search, in epoch order.
        cell: "normal" or "reduce".
        title: Figure title.
    """
    primitives = list(documents[0]["primitives"])
    nodes = int(documents[0]["nodes"])
    epochs = [int(document["epoch"]) for document in documents]
    # weights[epoch, edge, operation]
    weights = np.array([document[cell] for document in documents], dtype=np.float64)
    low, high = float(weights.min()), float(weights.max())
    if high - low < 1e-12:
        high = low + 1e-12

    columns = nodes + 1
    figure = Figure(figsize=(2.0 + 2.1 * columns, 0.6 + 1.9 * nodes), layout="constrained")
    grid = figure.subplots(nodes, columns, squeeze=False)
    figure.suptitle(title)
    image = None
    edge = 0
    for node in range(nodes):
        for source in range(columns):
            axes = grid[node][source]
            if source >= node + 2:
                axes.set_visible(False)
                continue
            image = axes.imshow(
                weights[:, edge, :].T,
                aspect="auto",
                cmap="viridis",
                vmin=low,
                vmax=high,
                interpolation="nearest",
            )
            axes.set_title(f"{_input_name(source)} → node {node}", fontsize="small")
            axes.set_yticks(range(len(primitives)))
            axes.set_yticklabels(primitives if source == 0 else [], fontsize="x-small")
            step = max(1, math.ceil(len(epochs) / 6))
            axes.set_xticks(range(0, len(epochs), step))
            axes.set_xticklabels([str(e) for e in epochs[::step]], fontsize="x-small")
            axes.set_xlabel("epoch", fontsize="small")
            edge += 1
    if image is not None:
        colour_bar = figure.colorbar(image, ax=grid.ravel().tolist(), shrink=0.8)
        colour_bar.set_label("softmax weight")
    return figure


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve for `plot_roc`: FAR and TAR per point, in 0..1."""

    label: str
    far: np.ndarray
    tar: np.ndarray


def plot_roc(curves: Sequence[RocCurve], title: str) -> Figure:
    """Draw TAR against FAR on a logarithmic FAR axis; points at FAR 0 cannot be shown."""
    figure = Figure(figsize=(6.5, 4.8))
    axes = figure.subplots()
    smallest = 1.0
    for index, curve in enumerate(curves):
        far = np.asarray(curve.far, dtype=np.float64)
        tar = np.asarray(curve.tar, dtype=np.float64)
        shown = far > 0
        if not np.any(shown):
            logger.warning("ROC %r has no point with FAR > 0, so it is not drawn", curve.label)
            continue
        smallest = min(smallest, float(far[shown].min()))
        axes.plot(
            far[shown],
            tar[shown],
            color=_COLOURS[index % len(_COLOURS)],
            label=curve.label,
            drawstyle="steps-post",
        )
    axes.set_xscale("log")
    axes.set_xlim(max(smallest, 1e-7) / 2, 1.0)
    axes.set_ylim(0.0, 1.01)
    _style(axes, title, "false accept rate (FAR)", "true accept rate (TAR)")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize="small")
    return figure


@dataclass(frozen=True)
class TradeoffPoint:
    """A user's network for the trade-off plot.

    Attributes:
        label: Legend text, for example the run name.
        params: Trainable parameters.
        mflops: MFLOPs for one image of `image_size`.
        image_size: Input side the FLOPs were counted for.
        accuracy: Accuracy in percent on `benchmark`.
        benchmark: Verification set name (a `.bin` stem or IJB set).
    """

    label: str
    params: int
    mflops: float
    image_size: int
    accuracy: float
    benchmark: str


def plot_tradeoff(points: Sequence[TradeoffPoint], title: str) -> Figure:
    """Draw accuracy against MFLOPs and against parameters, with the published PocketNets.

    The published models are drawn on each benchmark of the user's points that the PocketNet
    paper reports. When it reports none of them, their LFW accuracy is drawn for scale. The
    axes are logarithmic, because search-scale networks can be a thousand times smaller.
    """
    figure = Figure(figsize=(13, 5.4), layout="constrained")
    flops_axes, params_axes = figure.subplots(1, 2)
    figure.suptitle(f"{title}\nPublished points: {PUBLISHED_SOURCE}", fontsize="medium")
    benchmarks = list(dict.fromkeys(point.benchmark for point in points))
    published = [name for name in benchmarks if name in BENCHMARK_TITLES] or ["lfw"]

    for index, benchmark in enumerate(published):
        colour = _COLOURS[(index + 3) % len(_COLOURS)]
        # Models of one size lie almost on top of each other, so each gets its own marker and
        # legend entry instead of a text label.
        for model, marker in zip(PUBLISHED_MODELS, "sDPX", strict=True):
            label = f"{model.name}: {BENCHMARK_TITLES[benchmark]}"
            accuracy = model.accuracy[benchmark]
            flops_axes.scatter([model.mflops], [accuracy], marker=marker, color=colour, label=label)
            params_axes.scatter([model.params_millions], [accuracy], marker=marker, color=colour)

    for index, point in enumerate(points):
        colour = _COLOURS[index % 3]
        marker = "o^vD"[benchmarks.index(point.benchmark) % 4]
        size_note = "" if point.image_size == 112 else f", {point.image_size}x{point.image_size}"
        label = f"{point.label}: {point.benchmark}{size_note}"
        flops_axes.scatter([point.mflops], [point.accuracy], marker=marker, s=60, color=colour)
        params_axes.scatter(
            [point.params / 1e6], [point.accuracy], marker=marker, s=60, color=colour, label=label
        )

    _style(flops_axes, "Accuracy vs. MFLOPs", "MFLOPs per image (log scale)", "accuracy (%)")
    _style(
        params_axes, "Accuracy vs. parameters", "parameters, millions (log scale)", "accuracy (%)"
    )
    for axes in (flops_axes, params_axes):
        axes.set_xscale("log")
    flops_axes.legend(title="published", fontsize="x-small", loc="lower right")
    params_axes.legend(title="your runs", fontsize="x-small", loc="lower right")
    return figure


def cell_animation(
    frames: Sequence[tuple[str, Sequence[Path]]], path: str | os.PathLike[str]
) -> Path:
    """Write an animated GIF with one frame per epoch: its cell pictures stacked, captioned.

    Args:
        frames: (caption, [normal cell PNG, reduction cell PNG]) per epoch, in order.
        path: The GIF file to write.
    """
    pictures = []
    for caption, files in frames:
        cells = []
        for file in files:
            with Image.open(file) as image:
                cells.append(image.convert("RGB"))
        pictures.append((caption, cells))
    width = max(cell.width for _, cells in pictures for cell in cells)
    caption_height = 40
    height = caption_height + max(sum(cell.height for cell in cells) for _, cells in pictures)
    scale = min(1.0, _ANIMATION_WIDTH / width)
    font = ImageFont.load_default(size=24)

    rendered = []
    for caption, cells in pictures:
        canvas = Image.new("RGB", (width, height), "white")
        top = caption_height
        for cell in cells:
            canvas.paste(cell, ((width - cell.width) // 2, top))
            top += cell.height
        if scale < 1.0:
            canvas = canvas.resize(
                (round(width * scale), round(height * scale)), Image.Resampling.LANCZOS
            )
        ImageDraw.Draw(canvas).text((10, 8), caption, fill="black", font=font)
        rendered.append(canvas.convert("P", palette=Image.Palette.ADAPTIVE, colors=128))

    durations = [_FRAME_MILLISECONDS] * len(rendered)
    durations[-1] = 3 * _FRAME_MILLISECONDS  # linger on the final cells
    buffer = io.BytesIO()
    rendered[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=rendered[1:],
        duration=durations,
        loop=0,
    )
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue())
    return target
