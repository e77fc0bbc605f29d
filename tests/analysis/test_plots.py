"""Figures: the drawn data equals the input, and published points match the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pocketnas.analysis.plots import (
    RocCurve,
    TradeoffPoint,
    cell_animation,
    plot_alpha_heatmaps,
    plot_roc,
    plot_tradeoff,
    plot_training_curves,
    save_figure,
)
from pocketnas.analysis.published_results import BENCHMARKS, PUBLISHED_MODELS
from pocketnas.evaluation.evaluate import thin_roc

PRIMITIVES = ["none", "max_pool_3x3", "skip_connect"]


def alpha_documents(epochs: int, nodes: int) -> list[dict]:
    rng = np.random.default_rng(0)
    edges = sum(node + 2 for node in range(nodes))
    documents = []
    for epoch in range(1, epochs + 1):
        rows = rng.dirichlet(np.ones(len(PRIMITIVES)), size=edges)
        documents.append(
            {
                "epoch": epoch,
                "primitives": PRIMITIVES,
                "nodes": nodes,
                "normal": rows.tolist(),
                "reduce": rows[::-1].tolist(),
            }
        )
    return documents


def test_heatmap_panel_per_edge() -> None:
    documents = alpha_documents(epochs=4, nodes=3)
    figure = plot_alpha_heatmaps(documents, "normal", "Normal cell")
    panels = [axes for axes in figure.axes if axes.get_visible() and axes.images]
    assert len(panels) == 2 + 3 + 4
    titles = [axes.get_title() for axes in panels]
    assert titles[:3] == ["c_{k-2} → node 0", "c_{k-1} → node 0", "c_{k-2} → node 1"]
    assert titles[-1] == "node 1 → node 2"
    weights = np.array([document["normal"] for document in documents])
    for edge, axes in enumerate(panels):
        # rows: operations, columns: epochs
        np.testing.assert_allclose(axes.images[0].get_array(), weights[:, edge, :].T)
    assert [label.get_text() for label in panels[0].get_yticklabels()] == PRIMITIVES


def test_training_curves_plot_columns() -> None:
    metrics = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "lr": [0.1, 0.01, 0.001],
            "train_loss": [3.0, 2.0, 1.5],
            "lfw_accuracy": [0.8, 0.9, 0.95],
            "lfw_accuracy_std": [0.02, 0.01, 0.01],
        }
    )
    figure = plot_training_curves(metrics, "run")
    loss_axes, accuracy_axes, lr_axes = figure.axes
    np.testing.assert_allclose(loss_axes.lines[0].get_ydata(), [3.0, 2.0, 1.5])
    np.testing.assert_allclose(accuracy_axes.lines[0].get_ydata(), [0.8, 0.9, 0.95])
    assert accuracy_axes.get_legend().get_texts()[0].get_text().startswith("lfw")
    np.testing.assert_allclose(lr_axes.lines[0].get_ydata(), [0.1, 0.01, 0.001])
    for axes in figure.axes:
        assert axes.get_xlabel() == "epoch"
        assert axes.get_ylabel()


def test_roc_skips_zero_far() -> None:
    curve = RocCurve("lfw", np.array([0.0, 0.01, 0.5, 1.0]), np.array([0.0, 0.5, 0.9, 1.0]))
    figure = plot_roc([curve], "ROC")
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.lines[0].get_xdata(), [0.01, 0.5, 1.0])
    assert axes.get_xscale() == "log"
    assert "FAR" in axes.get_xlabel()
    assert "TAR" in axes.get_ylabel()


def test_published_points_match_reference(published) -> None:
    presets = published["presets"]
    keys = ["pocketnet-s128", "pocketnet-s256", "pocketnet-m128", "pocketnet-m256"]
    for model, key in zip(PUBLISHED_MODELS, keys):
        # The PocketNet paper gives millions to two decimals, truncated (0.92 for 925,632).
        assert model.params_millions == pytest.approx(presets[key]["params"] / 1e6, abs=0.01)
        assert model.mflops == pytest.approx(presets[key]["mflops"], abs=0.005), model.name
        assert set(model.accuracy) == set(BENCHMARKS)
    assert PUBLISHED_MODELS[0].accuracy["lfw"] == 99.58
    assert PUBLISHED_MODELS[3].accuracy["IJBC"] == 92.70


def test_tradeoff_draws_published_benchmark() -> None:
    point = TradeoffPoint("run", 80_000, 13.5, 112, 70.0, "agedb_30")
    figure = plot_tradeoff([point], "trade-off")
    flops_axes, params_axes = figure.axes[:2]
    published = [collection.get_offsets()[0].tolist() for collection in flops_axes.collections]
    expected = [[model.mflops, model.accuracy["agedb_30"]] for model in PUBLISHED_MODELS]
    assert published[: len(PUBLISHED_MODELS)] == expected
    assert published[-1] == [13.5, 70.0]
    assert params_axes.collections[-1].get_offsets()[0].tolist() == [0.08, 70.0]
    assert flops_axes.get_xscale() == "log"


def test_cell_animation_frames(tmp_path: Path) -> None:
    files = []
    for index, size in enumerate([(200, 80), (240, 60)]):
        path = tmp_path / f"cell{index}.png"
        Image.new("RGB", size, (index * 100, 50, 50)).save(path)
        files.append(path)
    gif = cell_animation([("epoch 1", files), ("epoch 2", files[::-1])], tmp_path / "cells.gif")
    with Image.open(gif) as animation:
        assert animation.n_frames == 2
        assert animation.size == (240, 40 + 140)


def test_save_figure_writes_png(tmp_path: Path) -> None:
    figure = plot_roc([RocCurve("a", np.array([0.1, 1.0]), np.array([0.5, 1.0]))], "ROC")
    path = save_figure(figure, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thin_roc_keeps_best_point_per_bin() -> None:
    rng = np.random.default_rng(3)
    far = np.sort(np.concatenate([[0.0, 0.0], 10 ** rng.uniform(-6, 0, 5000)]))
    tar = np.sort(rng.uniform(0, 1, len(far)))
    thinned_far, thinned_tar = thin_roc(far, tar, points_per_decade=10)
    assert len(thinned_far) <= 61
    # Loop version: the last (highest-TAR) point of each occupied bin.
    expected = {}
    for x, y in zip(far, tar):
        if x > 0:
            expected[int(np.floor(np.log10(x) * 10))] = (x, y)
    np.testing.assert_array_equal(thinned_far, [x for x, _ in expected.values()])
    np.testing.assert_array_equal(thinned_tar, [y for _, y in expected.values()])
